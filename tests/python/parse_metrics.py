"""Parses a Prometheus text exposition from stdin with the reference Python
client's parser (prometheus_client.parser) and prints what it found as JSON:
{"families": {name: type}, "samples": [[name, labels, value], ...]}.

A malformed exposition makes the parser raise, and the script exit non-zero.
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = {}
    samples = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            value = sample.value
            if math.isinf(value):
                value = "+Inf" if value > 0 else "-Inf"
            samples.append([sample.name, sample.labels, value])
    json.dump({"families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()

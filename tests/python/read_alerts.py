"""Reads a Prometheus rule file (YAML) given as the first argument and prints
its alerting rules as JSON: [{"alert", "expr", "for", "severity",
"runbook_url"}, ...]. A file that is not valid YAML, or a rule without an
alert name or expression, makes the script exit non-zero.
"""

import json
import sys

import yaml


def main():
    with open(sys.argv[1]) as file:
        document = yaml.safe_load(file)
    rules = []
    for group in document["groups"]:
        assert group["name"], "a group without a name"
        for rule in group["rules"]:
            rules.append(
                {
                    "alert": rule["alert"],
                    "expr": rule["expr"],
                    "for": rule.get("for", ""),
                    "severity": rule.get("labels", {}).get("severity", ""),
                    "runbook_url": rule.get("annotations", {}).get("runbook_url", ""),
                }
            )
    json.dump(rules, sys.stdout)


if __name__ == "__main__":
    main()

"""Prometheus rules: `promtool check rules` accepts them, `promtool test rules` passes, and every
alert has at least one test where it fires and one where it stays silent.

Run: .venv-tools/bin/python tests/deploy/prometheus_rules_test.py   (ctest: deploy.prometheus_rules)
"""
import glob
import os
import shutil
import subprocess
import sys
import unittest

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROM = os.path.join(ROOT, "deploy", "prometheus")
RULE_FILES = sorted(glob.glob(os.path.join(PROM, "rules", "*.yaml")))
TEST_FILES = sorted(glob.glob(os.path.join(PROM, "tests", "*.yaml")))


def promtool():
    path = shutil.which("promtool")
    if path is None:
        raise SystemExit("promtool not found: run ./x setup (Debian package prometheus)")
    return path


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


class Rules(unittest.TestCase):
    def test_files_exist(self):
        self.assertGreaterEqual(len(RULE_FILES), 2)
        self.assertGreaterEqual(len(TEST_FILES), 1)

    def test_promtool_check_rules(self):
        r = subprocess.run([promtool(), "check", "rules", *RULE_FILES], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_promtool_test_rules(self):
        r = subprocess.run([promtool(), "test", "rules", *TEST_FILES], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)

    def test_every_alert_fires_and_stays_silent_in_some_test(self):
        alerts = [rule["alert"] for f in RULE_FILES for g in load(f)["groups"] for rule in g["rules"]
                  if "alert" in rule]
        self.assertGreaterEqual(len(alerts), 8)
        fires, silent = set(), set()
        for f in TEST_FILES:
            doc = load(f)
            for rf in doc["rule_files"]:
                self.assertIn(os.path.normpath(os.path.join(os.path.dirname(f), rf)), RULE_FILES)
            for test in doc["tests"]:
                for case in test.get("alert_rule_test", []):
                    (fires if case.get("exp_alerts") else silent).add(case["alertname"])
        self.assertEqual(sorted(set(alerts) - fires), [], "alerts no test sees firing")
        self.assertEqual(sorted(set(alerts) - silent), [], "alerts no test sees silent")
        self.assertEqual(sorted((fires | silent) - set(alerts)), [], "tests of alerts that do not exist")

    def test_alerts_carry_severity_and_summary(self):
        for f in RULE_FILES:
            for g in load(f)["groups"]:
                for rule in g["rules"]:
                    if "alert" in rule:
                        self.assertIn(rule["labels"]["severity"], ("warning", "critical"), rule["alert"])
                        self.assertTrue(rule["annotations"]["summary"], rule["alert"])
                        self.assertTrue(rule["alert"].startswith("Fluxserve"), rule["alert"])

    def test_recording_rule_names_follow_level_metric_operations(self):
        for f in RULE_FILES:
            for g in load(f)["groups"]:
                for rule in g["rules"]:
                    if "record" in rule:
                        self.assertEqual(rule["record"].count(":"), 2, rule["record"])


if __name__ == "__main__":
    unittest.main(verbosity=2)

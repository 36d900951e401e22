#!/usr/bin/python3
"""The performance results' helpers: summarize_bound.py (results/peers) on a hand-made CSV whose
bounds are worked out here, and the clear errors of products_bound.sh, summarize_bound.py and
results/training-step/autocast.sh on bad input. They write or gate what the READMEs quote.
usage: python3 tests/results/test_perf_tools.py (CTest: results_perf_tools)"""
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(*args, env=None):
    return subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, **(env or {})})


class SummarizeBound(unittest.TestCase):
    tool = os.path.join(ROOT, "results", "peers", "summarize_bound.py")

    def test_bounds_worked_by_hand(self):
        # Shape 1,1,1000,1: one call is 14e6 FLOP, at 14 GFLOP/s T32 = 1 ms, at 28 T16 = 0.5 ms.
        # fp32: products 3 of 4 samples -> P32 = 0.75, R32 = 0.25 (ms); bf16: 1 of 4 -> P16 = 0.125,
        # R16 = 0.375. measured 2.00; products 6.00; rest 1.50; ideal 1 / (0.375 + 0.25) = 1.60;
        # as is 1 / (0.125 + 0.25) = 2.67.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bound.csv")
            with open(path, "w") as f:
                f.write('round,shape,dtype,gflops,products,rest,setup\n'
                        '1,"1,1,1000,1",fp32,14,300,100,7\n'
                        '1,"1,1,1000,1",bf16,28,50,150,7\n'
                        '2,"1,1,1000,1",fp32,14,300,100,7\n')  # round 2 has no bf16 run: left out
            r = run(sys.executable, self.tool, path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[2],
                         "| 1, 1, 1000, 1 | 1 | 0.75 (0.75–0.75) | 2.00 (2.00–2.00) | 6.00 (6.00–6.00) | "
                         "1.50 (1.50–1.50) | 1.60 (1.60–1.60) | 2.67 (2.67–2.67) |")

    def test_a_csv_of_another_kind_is_named(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ab.csv")
            with open(path, "w") as f:
                f.write("round,shape,commit,gflops\n1,\"1,1,8,8\",abc,1.0\n")
            r = run(sys.executable, self.tool, path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("lacks the column(s) dtype, products, rest", r.stderr)


class ScriptErrors(unittest.TestCase):
    def test_products_bound_without_a_binary(self):
        r = run("bash", os.path.join(ROOT, "results", "peers", "products_bound.sh"), "1",
                env={"PROFILE_FUSED": "/nonexistent/profile_fused"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("no /nonexistent/profile_fused", r.stderr)

    def test_autocast_names_a_bad_task_and_a_missing_binary(self):
        script = os.path.join(ROOT, "results", "training-step", "autocast.sh")
        r = run("bash", script, sys.executable, "1", env={"TASKS": "vit gpt"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("TASKS holds 'gpt'", r.stderr)
        r = run("bash", script, "/nonexistent/quest", "1", env={"TASKS": "vit"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("no quest binary at '/nonexistent/quest'", r.stderr)
        r = run("bash", script, sys.executable, "1", env={"TASKS": "vit", "BASELINE": "/nonexistent/old"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("no quest binary at '/nonexistent/old'", r.stderr)


if __name__ == "__main__":
    unittest.main()

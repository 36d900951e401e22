#!/usr/bin/python3
"""The scale sweep's results helpers (results/lr-sweep-scale/*.py) on small hand-made inputs whose
answers are worked out here: the verdict's table, the curves CSV updated in place, the record
compaction and the monitor's lead. They write what the README quotes, so they are tested like code.
usage: python3 tests/results/test_lr_sweep_scale_tools.py (CTest: results_lr_sweep_scale_tools)"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "results", "lr-sweep-scale")


def tool(name, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(TOOLS, name), *args], cwd=cwd,
                          capture_output=True, text=True)


class Table(unittest.TestCase):
    def test_sizes_side_by_side(self):
        header = ("size,kind,lr_sensitivity,ci_low,ci_high,best_val_loss,best_lr,init_loss,diverged,runs,"
                  "parameters,stable_lr,stable_logit_abs_max,stable_entropy_min\n")
        rows = [  # the larger size first: the table orders sizes by parameter count
            "big,standard,0.5,0.4,0.6,0.61,0.001,2.4,2,21,123456,0.1,192788.4,0.0\n",
            "big,quest,0.3,0.25,0.35,0.6049,0.001,2.4,0,21,123456,0.1,721,0.1\n",
            "big,standard+qk-clip,0.44,0.43,0.47,0.602,0.003,2.4,0,21,123456,0.1,2655,0.0\n",
            "small,standard,0.32,0.28,0.39,0.649,0.003,2.4,0,14,23914,0.3,62352.5,0.0\n",
            "small,quest,0.2338,0.2015,0.267,0.638,0.003,2.4,0,14,23914,0.3,533,0.0\n",
        ]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sensitivity.csv")
            with open(path, "w") as f:
                f.write(header + "".join(rows))
            r = tool("table.py", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines(), [
            "| kind | small (23 914) | big (123 456) | big best loss (lr) | big max \\|logit\\| at lr 0.1 |",
            "|---|---|---|---|---|",
            "| standard | 0.320 [0.280, 0.390] | 0.500 [0.400, 0.600] | 0.610 (0.001), 2 diverged | 192 788 |",
            "| quest | 0.234 [0.202, 0.267] | 0.300 [0.250, 0.350] | 0.605 (0.001) | 721 |",
            "| standard+qk-clip | — | 0.440 [0.430, 0.470] | 0.602 (0.003) | 2 655 |",
        ])

    def test_loss_against_rate_at_the_largest_size(self):
        with tempfile.TemporaryDirectory() as d:
            sens, runs = os.path.join(d, "sensitivity.csv"), os.path.join(d, "runs.csv")
            with open(sens, "w") as f:
                f.write("size,kind,lr_sensitivity,ci_low,ci_high,best_val_loss,best_lr,init_loss,diverged,runs,"
                        "parameters,stable_lr,stable_logit_abs_max,stable_entropy_min\n"
                        "a,standard,0.5,0.4,0.6,1.0,0.01,2.4,0,4,10,0.1,5,0\n"
                        "b,standard,0.5,0.4,0.6,1.0,0.01,2.4,0,4,99,0.1,5,0\n"
                        "b,quest,0.5,0.4,0.6,1.0,0.01,2.4,0,2,99,0.1,5,0\n")
            with open(runs, "w") as f:
                f.write("size,kind,lr,seed,final_val_loss\n"
                        "a,standard,0.01,0,9\n"  # the smaller size: not in the grid
                        "b,standard,0.01,0,1.0\n" "b,standard,0.01,1,2.0\n" "b,standard,0.1,0,3.0\n"
                        "b,quest,0.1,0,0.25\n")
            r = tool("table.py", sens, runs)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split("\n\n")[1].splitlines(), [
            "| b: kind | 0.01 | 0.1 |", "|---|---|---|",
            "| standard | 1.500 | 3.000 |", "| quest | — | 0.250 |"])


def step(n, loss, logits, log_z=1.5):
    return json.dumps({"type": "step", "step": n, "loss": loss, "log_z": log_z,
                       "attention": [{"logit_abs_max": logits}]}) + "\n"


def make_run(root, size, lr, kind, seed, lines, status="ok"):
    d = os.path.join(root, size, f"lr-{lr}", kind, f"seed-{seed}")
    os.makedirs(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.writelines(lines)
    if status:
        with open(os.path.join(d, "outcome.json"), "w") as f:
            json.dump({"status": status, "message": ""}, f)


class Curves(unittest.TestCase):
    HEADER = "size,kind,lr,seed,step,loss,logit_abs_max,log_z,warned"

    def test_updates_in_place(self):
        with tempfile.TemporaryDirectory() as d:
            runs, out = os.path.join(d, "runs"), os.path.join(d, "curves.csv")
            with open(out, "w") as f:  # an earlier machine's run, and a stale copy of one ended here
                f.write(self.HEADER + "\n" "s1,qknorm,0.01,1,0,2.5,3,2,0\n" "s1,quest,0.1,0,0,9,9,9,0\n")
            warning = json.dumps({"type": "warning", "step": 10, "warning": "logit_growth"}) + "\n"
            make_run(runs, "s1", "0.1", "quest", 0,
                     [step(0, 2.5, [1.0, 4.0]), step(10, 2.0, [3.0, 2.0]), warning,
                      step(10, 1.9, [3.5, 2.0])])  # resumed: step 10 logged again, the last counts
            make_run(runs, "s1", "0.3", "quest", 0, [step(0, 2.5, [1.0])], status=None)  # still training
            make_run(runs, "s1", "0.3", "standard", 0, [step(0, 2.5, [1.0])], status="failed")
            make_run(runs, "s2", "0.003", "standard", 1, [step(0, 2.25, [0.5])], status="diverged")
            r = tool("curves.py", "vit", out, runs)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("3 runs (2 from run directories here)", r.stderr)
            with open(out) as f:
                self.assertEqual(f.read().splitlines(), [
                    self.HEADER,
                    "s1,qknorm,0.01,1,0,2.5,3,2,0",
                    "s1,quest,0.1,0,0,2.5,4,1.5,0",
                    "s1,quest,0.1,0,10,1.9,3.5,1.5,1",
                    "s2,standard,0.003,1,0,2.25,0.5,1.5,0",
                ])
            self.assertFalse(os.path.exists(out + ".tmp"))

    def test_refuses_a_foreign_csv(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "curves.csv")
            with open(out, "w") as f:
                f.write("a,b,c\n1,2,3\n")
            r = tool("curves.py", "vit", out, os.path.join(d, "runs"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("does not start with the header", r.stderr)
            with open(out) as f:
                self.assertEqual(f.read(), "a,b,c\n1,2,3\n")  # left as it was


def record_line(size, kind, lr, seed, loss, status="ok"):
    return json.dumps({"size": size, "kind": kind, "lr": lr, "seed": seed, "final_val_loss": loss,
                       "status": status}) + "\n"


class Compact(unittest.TestCase):
    def test_keeps_the_last_line_per_run_in_first_order(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "record.jsonl")
            with open(path, "w") as f:
                f.write(record_line("s1", "quest", 0.1, 0, 1.0) + record_line("s1", "quest", 0.1, 1, 2.0) +
                        "\n" + record_line("s1", "quest", 0.1, 0, 3.0).rstrip("\n"))  # no final newline
            r = tool("compact.py", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("3 lines -> 2", r.stdout)
            with open(path) as f:
                self.assertEqual([(j["seed"], j["final_val_loss"]) for j in map(json.loads, f)],
                                 [(0, 3.0), (1, 2.0)])


class MonitorLead(unittest.TestCase):
    def test_lead_from_curves_and_record(self):
        # Best rate 0.01 (the lowest mean final loss). At lr 0.1 the loss jumps by 2 at step 40, so
        # the 5-point moving mean's gap to the best rate's is 0.4 there and grows after; the
        # monitor warned at step 10.
        with tempfile.TemporaryDirectory() as d:
            root = os.path.join(d, "results", "lr-sweep-scale", "t")
            os.makedirs(root)
            with open(os.path.join(root, "record.jsonl"), "w") as f:
                f.write(record_line("s4", "quest", 0.01, 0, 1.0) + record_line("s4", "quest", 0.1, 0, 2.0) +
                        record_line("s4", "quest", 0.001, 0, 1.5))
            ref = [2.0] * 8
            high = [2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0]  # moving-mean gaps 0,0,0,0,.4,.8,1.2,1.6
            with open(os.path.join(root, "curves.csv"), "w") as f:
                f.write(Curves.HEADER + "\n")
                for lr, losses in (("0.01", ref), ("0.1", high), ("0.001", high)):
                    for i, loss in enumerate(losses):
                        warned = int(lr == "0.1" and i == 1)
                        f.write(f"s4,quest,{lr},0,{10 * i},{loss},1,1,{warned}\n")
            r = tool("monitor_lead.py", "t", "s4", cwd=d)
        self.assertEqual(r.returncode, 0, r.stderr)
        # degraded at step 40 (gap 0.4 > 0.1 there and at every later step), warned at 10: lead 30;
        # lr 0.001 lies below the best rate and is not counted
        self.assertIn("| s4 | quest | 0.01 | 1 | 1 | 1 | 1 | 30 (30..30) |", r.stdout)


if __name__ == "__main__":
    unittest.main()

#!/usr/bin/env python3
"""Where mock ingest's CPU goes, beside `heimdex bench ingest`'s rates: CPU time per 1,000 jobs
of every process in the run, for the service and for the broker's bound.

Each round starts `serve` on a fresh data dir (API on port 18011, its nats-server on 14311,
metrics on 19011; they must be free), runs `heimdex bench ingest -n N -c C --single 0` against
it (with the bound), and reads user + system time from /proc every 50 ms:
- service phase, from the client's start to its `completed:` line: `serve` (all its threads),
  the nats-server `serve` started, and the client;
- bound phase, from the bound's scratch nats-server appearing (a child of the client) to the
  client's `bound:` line: the client (its producers, lean worker and projector) and that
  nats-server.

The efficiency `bench ingest` prints is a ratio of rates; when both runs keep the cores busy
it is close to the ratio of these totals (bound ÷ service), and the totals say which process
the difference is in. Prints the CPU flags (the client's line), one line per round, and the
medians.

    python3 bench/ingest_cpu.py [--bin target/release/heimdex] [-n 20000] [-c 16] [--rounds 3]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HZ = os.sysconf("SC_CLK_TCK")
API, NATS, METRICS = 18011, 14311, 19011


def proc_stat(pid):
    """A process's name and the fields of /proc/<pid>/stat after it, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :].split()


def cpu_seconds(pid):
    """User + system time of a process so far, or None once it is gone."""
    stat = proc_stat(pid)
    return None if stat is None else (int(stat[1][11]) + int(stat[1][12])) / HZ


def nats_child(ppid):
    """The pid of a nats-server whose parent is `ppid`, if there is one."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        stat = proc_stat(entry)
        if stat and stat[0].startswith("nats-server") and int(stat[1][1]) == ppid:
            return int(entry)
    return None


def wait_ready(proc, log):
    for _ in range(120):
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{API}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    with open(log) as f:
        sys.exit(f"serve did not become ready on port {API}:\n{f.read()[-2000:]}")


def one_round(args, env):
    data = tempfile.mkdtemp(prefix="heimdex-ingest-cpu-")
    log = os.path.join(data, "serve.log")
    serve_env = dict(
        env,
        HEIMDEX_DATA_DIR=data,
        HEIMDEX_API_ADDR=f"127.0.0.1:{API}",
        HEIMDEX_METRICS_ADDR=f"127.0.0.1:{METRICS}",
        HEIMDEX_NATS_LISTEN=f"127.0.0.1:{NATS}",
    )
    with open(log, "w") as out:
        serve = subprocess.Popen([args.bin, "serve"], env=serve_env, stdout=out, stderr=out)
    try:
        wait_ready(serve, log)
        broker = nats_child(serve.pid)
        if broker is None:
            sys.exit("serve started no nats-server of its own (is NATS_URL set?)")
        client = subprocess.Popen(
            [args.bin, "bench", "ingest", "--url", f"http://127.0.0.1:{API}",
             "-n", str(args.n), "-c", str(args.c), "--single", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        # CPU of each process at the marks: "start", "completed", "bound start", "bound".
        marks, latest, scratch, lines = {}, {}, [None], []

        def sample():
            pids = {"serve": serve.pid, "broker": broker, "client": client.pid}
            while client.poll() is None:
                now = {name: cpu_seconds(pid) for name, pid in pids.items()}
                if scratch[0] is None:
                    scratch[0] = nats_child(client.pid)
                    if scratch[0] is not None:
                        pids["scratch"] = scratch[0]
                        now["scratch"] = cpu_seconds(scratch[0])
                        marks["bound start"] = dict(now)
                latest.update({k: v for k, v in now.items() if v is not None})
                marks.setdefault("start", dict(now))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        for line in client.stdout:
            lines.append(line)
            if "completed:" in line:
                marks["completed"] = dict(latest)
            elif line.lstrip().startswith("bound:"):
                marks["bound"] = dict(latest)
        client.wait()
        sampler.join()
        text = "".join(lines)
        ended = {"start", "completed", "bound start", "bound"} <= marks.keys()
        if client.returncode != 0 or not ended:
            sys.exit(f"bench ingest did not run to its end:\n{text}")
    finally:
        serve.terminate()
        serve.wait()
        shutil.rmtree(data, ignore_errors=True)

    def per_k(name, since, until):
        return (marks[until][name] - marks[since][name]) * 1e6 / args.n

    row = {
        "completed/s": float(re.search(r"completed: .*-> (\d+) jobs/s", text).group(1)),
        "bound/s": float(re.search(r"bound: .*-> (\d+) jobs/s", text).group(1)),
        "efficiency": float(re.search(r"efficiency: .* = ([\d.]+)", text).group(1)),
        "serve": per_k("serve", "start", "completed"),
        "its nats-server": per_k("broker", "start", "completed"),
        "client": per_k("client", "start", "completed"),
        "bound client": per_k("client", "bound start", "bound"),
        "bound nats-server": per_k("scratch", "bound start", "bound"),
    }
    row["service total"] = row["serve"] + row["its nats-server"] + row["client"]
    row["bound total"] = row["bound client"] + row["bound nats-server"]
    row["CPU ratio"] = row["bound total"] / row["service total"]
    # The client prints the CPU flags it ran with.
    return row, re.search(r"^cpu: .*$", text, re.M).group(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/heimdex", help="relative to the cwd")
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("-c", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    # `serve` finds the models (and `/readyz` waits for them) under the repo's `.tools`.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    env = dict(os.environ, JWT_SECRET="ingest-cpu-bench-secret")
    env.setdefault("NATS_SERVER_BIN", os.path.join(root, ".tools/bin/nats-server"))
    env.pop("NATS_URL", None)
    rows = []
    for i in range(args.rounds):
        row, cpu = one_round(args, env)
        if not rows:
            print(cpu)
            print(f"bench ingest -n {args.n} -c {args.c}; CPU ms per 1,000 jobs")
        rows.append(row)
        print(f"round {i + 1}: {show(row)}", flush=True)
    print(f"median: {show({k: statistics.median(r[k] for r in rows) for k in rows[0]})}")


def show(row):
    """Ratios with two decimals, the rest whole."""
    ratios = ("efficiency", "CPU ratio")
    return ", ".join(f"{k} {v:.2f}" if k in ratios else f"{k} {v:.0f}" for k, v in row.items())


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""fluxserve serve benchmarks on the tiny model (issue #5), with Debian's grpcio (/usr/bin/python3):

  overhead    sequential requests: client-observed latency minus the pipeline's own time
              (Result.timings text + denoise + decode), p50/p99 over --requests; the same request
              through the offline CLI (`fluxserve generate`, its RESULT total_s) for comparison
  throughput  --clients concurrent streaming clients for --seconds: requests/s, images/s,
              latency p50/p99, against one client
  swap-rss    --cycles SwapModel round trips (plain <-> bitsandbytes nf4 transformer): the
              server's resident set (VmRSS) after every cycle, with the slope of a linear fit

The script starts its own server (`--fluxserve`, default build/fluxserve) on loopback with the
embedded default model and generates its Python message modules with protoc into a temp dir.
It prints a ready-to-paste bench/RESULTS.md row per benchmark."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_util import cpu_model, git_rev, parse_result  # noqa: E402


def gen_modules(tmp: Path) -> None:
    out = tmp / "py"
    out.mkdir()
    protos = ["fluxserve/v1/model_spec.proto", "fluxserve/v1/image_service.proto",
              "fluxserve/v1/model_service.proto"]
    subprocess.run(["protoc", f"--proto_path={REPO / 'proto'}", f"--python_out={out}", *protos],
                   check=True)
    subprocess.run(["protoc", f"--proto_path={REPO / 'proto/grpc/health/v1'}",
                    f"--python_out={out}", "health.proto"], check=True)
    sys.path.insert(0, str(out))


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


class Server:
    def __init__(self, binary: str, tmp: Path, threads: int, max_queue: int):
        self.port_file = tmp / "port"
        args = [binary, "serve", "--listen", "127.0.0.1:0", "--port-file", str(self.port_file),
                "--metrics-listen", "", "--threads", str(threads), "--max-queue", str(max_queue)]
        self.log = open(tmp / "server.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError((tmp / "server.log").read_text())
            time.sleep(0.02)
        self.address = "127.0.0.1:" + self.port_file.read_text().strip()

    def rss_bytes(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def make_stubs(channel):
    from fluxserve.v1 import image_service_pb2 as img, model_service_pb2 as ms
    import health_pb2
    ser = lambda m: m.SerializeToString()  # noqa: E731
    return {
        "generate": channel.unary_stream("/fluxserve.v1.ImageService/Generate",
                                         request_serializer=ser,
                                         response_deserializer=img.GenerateResponse.FromString),
        "swap": channel.unary_unary("/fluxserve.v1.ModelService/SwapModel",
                                    request_serializer=ser,
                                    response_deserializer=ms.SwapModelResponse.FromString),
        "check": channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=ser,
                                     response_deserializer=health_pb2.HealthCheckResponse.FromString),
    }


def request(args, seed: int):
    from fluxserve.v1 import image_service_pb2 as img
    return img.GenerateRequest(prompt=args.prompt, width=args.size, height=args.size,
                               num_inference_steps=args.steps, max_sequence_length=args.msl,
                               seed=seed)


def one_call(stubs, req) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = None
    for ev in stubs["generate"](req, timeout=600):
        if ev.WhichOneof("event") == "result":
            result = ev.result
    return time.perf_counter() - t0, result


def bench_overhead(args, stubs) -> dict:
    for i in range(args.warmup):
        one_call(stubs, request(args, i))
    client, pipeline, server_total = [], [], []
    for i in range(args.requests):
        dt, r = one_call(stubs, request(args, 1000 + i))
        t = r.timings
        client.append(dt)
        pipeline.append(t.text_encode_seconds + t.denoise_seconds + t.decode_seconds)
        server_total.append(t.total_seconds)
    over = [c - p for c, p in zip(client, pipeline)]
    srv_over = [s - p for s, p in zip(server_total, pipeline)]
    # The offline CLI on the same request: its pipeline time (RESULT total_s), model load excluded.
    cli = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.cli_runs):
            out = subprocess.run([args.fluxserve, "generate", "--prompt", args.prompt, "--width",
                                  str(args.size), "--height", str(args.size), "--steps",
                                  str(args.steps), "--max-sequence-length", str(args.msl),
                                  "--seed", str(1000 + i), "--threads", str(args.threads),
                                  "--output", f"{d}/x.png"], capture_output=True, text=True,
                                 check=True)
            cli.append(parse_result(out.stdout, "total_s")["total_s"])
    res = {
        "client_p50": pct(client, 50), "client_p99": pct(client, 99),
        "pipeline_p50": pct(pipeline, 50), "pipeline_p99": pct(pipeline, 99),
        "overhead_p50": pct(over, 50), "overhead_p99": pct(over, 99),
        "server_overhead_p50": pct(srv_over, 50), "server_overhead_p99": pct(srv_over, 99),
        "cli_p50": pct(cli, 50) if cli else float("nan"),
    }
    print(f"\n== overhead: {args.requests} sequential requests ({args.size}x{args.size}, "
          f"{args.steps} steps) ==")
    print(f"  client latency    p50 {res['client_p50']*1e3:8.2f} ms  p99 {res['client_p99']*1e3:8.2f} ms")
    print(f"  pipeline (server) p50 {res['pipeline_p50']*1e3:8.2f} ms  p99 {res['pipeline_p99']*1e3:8.2f} ms")
    print(f"  pipeline (CLI)    p50 {res['cli_p50']*1e3:8.2f} ms  ({args.cli_runs} runs of fluxserve generate)")
    print(f"  overhead = client - pipeline: p50 {res['overhead_p50']*1e3:.2f} ms  "
          f"p99 {res['overhead_p99']*1e3:.2f} ms  (target < 5 ms)")
    print(f"  of which inside the server (timings.total - pipeline): p50 "
          f"{res['server_overhead_p50']*1e3:.2f} ms  p99 {res['server_overhead_p99']*1e3:.2f} ms")
    return res


def bench_throughput(args, address: str) -> dict:
    import grpc

    def run(nclients: int) -> dict:
        stop_at = time.perf_counter() + args.seconds
        lat, images, errors = [], [0], []
        lock = threading.Lock()

        def client(k: int):
            ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            stubs = make_stubs(ch)
            i = 0
            while time.perf_counter() < stop_at:
                try:
                    dt, r = one_call(stubs, request(args, k * 100000 + i))
                    with lock:
                        lat.append(dt)
                        images[0] += len(r.images)
                except grpc.RpcError as e:
                    with lock:
                        errors.append(e.code().name)
                i += 1
            ch.close()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(nclients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {"clients": nclients, "requests": len(lat), "wall": wall,
                "rps": len(lat) / wall, "ips": images[0] / wall, "p50": pct(lat, 50),
                "p99": pct(lat, 99), "errors": len(errors)}

    one = run(1)
    many = run(args.clients)
    print(f"\n== throughput: {args.seconds:.0f} s each ==")
    for r in (one, many):
        print(f"  {r['clients']:3d} client(s): {r['requests']:5d} requests, {r['rps']:6.2f} req/s, "
              f"{r['ips']:6.2f} images/s, latency p50 {r['p50']*1e3:8.1f} ms p99 "
              f"{r['p99']*1e3:8.1f} ms, errors {r['errors']}")
    return {"one": one, "many": many}


def bench_swap_rss(args, server: Server, stubs) -> dict:
    from fluxserve.v1 import model_service_pb2 as ms, model_spec_pb2 as spec
    from google.protobuf import struct_pb2

    def model_spec(nf4: bool):
        s = spec.ModelSpec(name="tiny-flux", path="tiny-flux")
        if nf4:
            kw = struct_pb2.Struct()
            kw.update({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
            s.quantization.quant_backend = "bitsandbytes_4bit"
            s.quantization.quant_kwargs.CopyFrom(kw)
            s.quantization.components_to_quantize.append("transformer")
        return s

    rss = [server.rss_bytes()]
    for c in range(args.cycles):
        for nf4 in (True, False):
            stubs["swap"](ms.SwapModelRequest(name="tiny-flux", spec=model_spec(nf4)), timeout=300)
        one_call(stubs, request(args, c))  # the swapped-in pipeline serves
        rss.append(server.rss_bytes())
    xs = list(range(len(rss)))
    mx, my = statistics.mean(xs), statistics.mean(rss)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, rss)) / sum((x - mx) ** 2 for x in xs)
    res = {"first": rss[0], "after1": rss[1], "min": min(rss), "max": max(rss), "last": rss[-1],
           "slope": slope, "cycles": args.cycles}
    mib = 1 << 20
    print(f"\n== RSS across {args.cycles} swap cycles (plain -> nf4 -> plain, one request each) ==")
    print(f"  start {rss[0]/mib:.1f} MiB, after cycle 1 {rss[1]/mib:.1f} MiB, min {min(rss)/mib:.1f}, "
          f"max {max(rss)/mib:.1f}, last {rss[-1]/mib:.1f} MiB; slope {slope/1024:.1f} KiB/cycle")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fluxserve", default=str(REPO / "build/fluxserve"))
    ap.add_argument("--bench", default="overhead,throughput,swap-rss")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--msl", type=int, default=64, help="max_sequence_length")
    ap.add_argument("--prompt", default="a red fox in the snow")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cli-runs", type=int, default=20)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--cycles", type=int, default=100)
    args = ap.parse_args()

    import grpc
    benches = args.bench.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen_modules(tmp)
        # Room for every concurrent client in the queue: the throughput bench measures serving,
        # not rejection.
        server = Server(args.fluxserve, tmp, args.threads, max(16, 2 * args.clients))
        channel = grpc.insecure_channel(server.address)
        stubs = make_stubs(channel)
        import health_pb2
        deadline = time.time() + 60
        while True:
            try:
                if stubs["check"](health_pb2.HealthCheckRequest(), timeout=5).status == 1:
                    break
            except grpc.RpcError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server never SERVING")
            time.sleep(0.05)
        out = {}
        if "overhead" in benches:
            out["overhead"] = bench_overhead(args, stubs)
        if "throughput" in benches:
            out["throughput"] = bench_throughput(args, server.address)
        if "swap-rss" in benches:
            out["swap-rss"] = bench_swap_rss(args, server, stubs)
        channel.close()
        code = server.stop()
        if code != 0:
            print(f"warning: fluxserve exited {code} after SIGTERM", file=sys.stderr)

    date = datetime.date.today().isoformat()
    cmd = "bench/server_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("RESULTS.md rows:")
    if "overhead" in out:
        o = out["overhead"]
        print(f"| {date} | {git_rev()} | overhead | {args.requests} seq. | "
              f"{o['client_p50']*1e3:.2f} / {o['client_p99']*1e3:.2f} | "
              f"{o['pipeline_p50']*1e3:.2f} / {o['pipeline_p99']*1e3:.2f} | "
              f"{o['cli_p50']*1e3:.2f} | {o['overhead_p50']*1e3:.2f} / {o['overhead_p99']*1e3:.2f} | "
              f"`{cmd}` |")
    if "throughput" in out:
        t = out["throughput"]
        print(f"| {date} | {git_rev()} | throughput | 1: {t['one']['rps']:.2f} req/s; "
              f"{t['many']['clients']}: {t['many']['rps']:.2f} req/s, {t['many']['ips']:.2f} img/s, "
              f"p50 {t['many']['p50']*1e3:.0f} ms, p99 {t['many']['p99']*1e3:.0f} ms, "
              f"errors {t['many']['errors']} | `{cmd}` |")
    if "swap-rss" in out:
        s = out["swap-rss"]
        mib = 1 << 20
        print(f"| {date} | {git_rev()} | swap RSS | {s['cycles']} cycles: start {s['first']/mib:.1f}, "
              f"after 1 {s['after1']/mib:.1f}, max {s['max']/mib:.1f}, last {s['last']/mib:.1f} MiB, "
              f"slope {s['slope']/1024:.1f} KiB/cycle | `{cmd}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

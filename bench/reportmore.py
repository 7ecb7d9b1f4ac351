"""The report's later sections: more servers against mlxd, mlxd's variants, the workloads, the
second start and the memory bandwidth a decode step reaches; and the targets they check
(issue 15's)."""

from __future__ import annotations

# Spec-sheet memory bandwidth, bytes/s, by a word of the device name (MLX's device_name).
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100": 3.35e12,  # SXM; the PCIe card has 2.0
    "A100": 2.0e12,
    "L40S": 0.864e12,
    "RTX 4090": 1.008e12,
}
FIT_TOKENS = 4096  # stream length for "how many streams fit" under --kv-bits


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _fx(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _level(srv: dict, c) -> dict:
    return (srv.get("levels") or {}).get(str(c)) or {}


def server_ratio_lines(servers: dict, concurrency: list[int], base: str, other: str) -> list[str]:
    if base not in servers or other not in servers or not servers[other].get("levels"):
        return []
    a, b = servers[base], servers[other]
    lines = [f"{base + ' / ' + other:<36}" + "".join(f"{'c=' + str(c):>9}" for c in concurrency)]
    for key, label in (
        ("aggregate_tok_s", "aggregate tok/s (higher=better)"),
        ("ttft_s_p50", "TTFT p50 (lower=better)"),
    ):
        row = [_ratio(_level(a, c).get(key), _level(b, c).get(key)) for c in concurrency]
        lines.append(f"  {label:<34}" + "".join(f"{_fx(x):>9}" for x in row))
    return lines


def variant_lines(servers: dict, concurrency: list[int]) -> list[str]:
    lines = []
    for name, srv in servers.items():
        if not name.startswith("mlxd[") or "mlxd" not in servers:
            continue
        row = [
            _ratio(
                _level(srv, c).get("aggregate_tok_s"),
                _level(servers["mlxd"], c).get("aggregate_tok_s"),
            )
            for c in concurrency
        ]
        lines.append(f"{name + ' / mlxd aggregate':<36}" + "".join(f"{_fx(x):>9}" for x in row))
        fit = _streams_that_fit(servers["mlxd"]), _streams_that_fit(srv)
        if None not in fit:
            lines.append(
                f"  KV bytes/token {fit[0][1]} -> {fit[1][1]}; streams of {FIT_TOKENS} tokens "
                f"that fit the KV budget: {fit[0][0]} -> {fit[1][0]} "
                f"({_fx(_ratio(fit[1][0], fit[0][0]))})"
            )
    return lines


def _streams_that_fit(srv: dict):
    status = srv.get("status") or {}
    budget = (status.get("queue") or {}).get("kv_budget_bytes")
    per_token = (status.get("model") or {}).get("kv_bytes_per_token")
    if not budget or not per_token:
        return None
    return budget // (FIT_TOKENS * per_token), per_token


def workload_lines(servers: dict) -> list[str]:
    lines = []
    for name, srv in servers.items():
        w = srv.get("workloads") or {}
        sp, lp = w.get("shared_prefix"), w.get("long_prompts")
        if sp:
            d, s = sp["distinct"], sp["shared"]
            lines.append(
                f"{name}: shared prefix, {sp['streams']} streams, prompts of "
                f"~{s.get('prompt_tokens_p50') or 0:.0f} tokens: TTFT p50 {_ms(s['ttft_s_p50'])} ms "
                f"shared vs {_ms(d['ttft_s_p50'])} ms distinct ({_fx(sp['ttft_ratio'])}), "
                f"aggregate {s['aggregate_tok_s'] or 0:.1f} vs {d['aggregate_tok_s'] or 0:.1f} "
                f"tok/s ({_fx(sp['aggregate_ratio'])})"
            )
        if lp:
            lines.append(
                f"{name}: {lp['long_requests']} prompts of ~{lp['long_prompt_tokens_p50'] or 0:.0f} "
                f"tokens arriving while {lp['decoders']} streams decode (TTFT p50 "
                f"{_ms(lp['long_ttft_s_p50'])} ms, {lp['decoders_still_running']} decoders still "
                "running at the last one's first token); the decoders' inter-token gaps, ms:"
            )
            for key, label in (
                ("itl_before_s", "before they arrived"),
                ("itl_during_s", "until the last one's first token"),
                ("itl_from_arrival_s", "from their arrival on"),
                ("itl_all_s", "whole run"),
            ):
                g = lp[key]
                lines.append(
                    f"    {label:<34} p50 {_ms(g['p50']):>5}  p99 {_ms(g['p99']):>5}  "
                    f"p99/p50 {_fx(g['p99_over_p50'])} ({g['n']} gaps)"
                )
    return lines


def bandwidth_lines(res: dict) -> tuple[list[str], dict]:
    """Weight bytes one decode step reads / the step's time, at batch 1 (raw and mlxd) and at
    the largest level, against the device's spec and a measured read."""
    probe, raw = res["probe"], res.get("raw") or {}
    name = str((probe.get("device_info") or {}).get("device_name", ""))
    peak = next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
    measured = probe.get("read_bandwidth_bytes_s")
    mlxd = res["servers"].get("mlxd") or {}
    weights = ((mlxd.get("status") or {}).get("model") or {}).get("weights") or {}
    rows = {}
    if raw.get("decode_tok_s") and raw.get("weight_bytes"):
        rows["raw batch 1"] = raw["weight_bytes"] * raw["decode_tok_s"]
    for c in (1, max(res["config"]["concurrency"])):
        rate = _level(mlxd, c).get("decode_tok_s_p50")
        if rate and weights.get("bytes"):
            dense_from = weights.get("decode_dense_from")
            dense = weights.get("dense_bytes") and dense_from is not None and c >= dense_from
            rows[f"mlxd batch {c}"] = (weights["dense_bytes"] if dense else weights["bytes"]) * rate
    text = "memory bandwidth reached by decode (weight bytes per step / step time): " + ", ".join(
        f"{k} {v / 1e9:.0f} GB/s" for k, v in rows.items()
    )
    if peak is not None:
        text += f"; device peak {peak / 1e9:.0f} GB/s ({name})"
    if measured:
        text += f"; measured read (MLX sum) {measured / 1e9:.0f} GB/s"
    lines = [text]
    return lines, {
        "bytes_per_s": rows,
        "peak_bytes_per_s": peak,
        "measured_read_bytes_per_s": measured,
    }


def more_targets(res: dict, gpu: bool) -> list[tuple[str, float | None, float, str]]:
    """(label, value, threshold, op) rows for issue 15's targets."""
    servers = res["servers"]
    mlxd = servers.get("mlxd") or {}
    out = []
    w = mlxd.get("workloads") or {}
    if w.get("shared_prefix"):
        sp = w["shared_prefix"]
        out.append(
            ("shared prefix: TTFT p50 shared/distinct <= 0.50x", sp["ttft_ratio"], 0.5, "<=")
        )
        out.append(
            ("shared prefix: aggregate shared/distinct >= 1.00x", sp["aggregate_ratio"], 1.0, ">=")
        )
    if w.get("long_prompts"):
        g = w["long_prompts"]["itl_from_arrival_s"]
        out.append(("long prompts: decoders' ITL p99/p50 <= 3.00x", g["p99_over_p50"], 3.0, "<="))
    if gpu:
        ttft64 = _level(mlxd, 64).get("ttft_s_p50")
        out.append(("TTFT p50 @64 streams <= 1.00 s", ttft64, 1.0, "<="))
        st = (mlxd.get("startup") or {}).get("ready_s")
        out.append(("first start to ready <= 30 s", st, 30.0, "<="))
        again = ((mlxd.get("restart") or {}).get("startup") or {}).get("ready_s")
        out.append(("second start to ready <= 10 s", again, 10.0, "<="))
    for name, srv in servers.items():
        if name.startswith("mlxd[kv"):
            worst = min(
                (
                    r
                    for c in res["config"]["concurrency"]
                    if (
                        r := _ratio(
                            _level(srv, c).get("aggregate_tok_s"),
                            _level(mlxd, c).get("aggregate_tok_s"),
                        )
                    )
                    is not None
                ),
                default=None,
            )
            out.append((f"{name}: aggregate within 10% of mlxd at every level", worst, 0.9, ">="))
    return out

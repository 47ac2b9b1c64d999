"""``python -m benchmarks``: run a grid, write results.json, results.md and the plots."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional

__all__ = ["main", "default_out_dir"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def default_out_dir(grid: str) -> str:
    """``benchmarks/results/local`` for --quick, ``.../local/<grid>`` otherwise.

    Never the committed ``benchmarks/results/<machine>`` folders: a run replaces
    those only when asked to with ``--out``.
    """
    base = os.path.join(_HERE, "results", "local")
    return base if grid == "quick" else os.path.join(base, grid)


_SHOWN_WARNINGS = 6


def spread_warnings(rows: list) -> list:
    """One line per timed row whose IQR / median exceeds ``report.NOISY_SPREAD``."""
    from benchmarks.report import NOISY_SPREAD, iqr_share

    lines = []
    for row in rows:
        spread = iqr_share(row)
        if spread is not None and spread > NOISY_SPREAD:
            lines.append(
                f"{row['label']} {row['workload']} {row['peer']}: IQR is {spread:.0%} of the "
                "median; ratios involving it are uncertain by about as much"
            )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare lstm_jax (every registered backend) with Flax, Equinox, "
        "PyTorch and cuDNN: inference and training step time, compile time, memory.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="grid", action="store_const", const="quick",
                      help="the performance targets and a short sweep (default; ~4 min on 2 cores)")
    mode.add_argument("--full", dest="grid", action="store_const", const="full",
                      help="adds layers, bidirectional, bf16, every peer, and T up to 4096")
    mode.add_argument("--targets", dest="grid", action="store_const", const="targets",
                      help="the four targets (LSTM: train, infer, bf16 train; GRU: train, infer) "
                      "against Flax and PyTorch, and the RL case; more rounds (28 min on 2 cores under load 10)")
    mode.add_argument("--rl", dest="grid", action="store_const", const="rl",
                      help="the RL case only: B256 T128 I32 H128 with 2%% resets, and without, "
                      "against Flax's ScannedRNN pattern")
    mode.add_argument("--device", dest="grid", action="store_const", const="device",
                      help="the GPU/TPU grid (FlashRNN's B=16 T=1024 H=768, the Pallas shapes, the "
                      "CPU targets) against cuDNN via PyTorch and jax.experimental.rnn; needs a GPU or TPU")
    mode.add_argument("--tiny", dest="grid", action="store_const", const="tiny",
                      help="tiny shapes in seconds (a smoke test)")
    parser.set_defaults(grid="quick")
    parser.add_argument("--peers", default=None,
                        help="comma list of peers or prefixes, e.g. 'lstm_jax,flax_linen_optimized,"
                        "torch' (default: all). Speed-ups need flax_linen_optimized.")
    parser.add_argument("--out", default=None,
                        help="output folder (default: benchmarks/results/local[/<grid>], not committed; "
                        "pass benchmarks/results/<machine> to replace the committed results)")
    parser.add_argument("--case-budget", type=float, default=None, metavar="SECONDS",
                        help="timing budget of one case's interleaved rounds (default: the grid's)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="start no case after this many minutes; the cases not run are "
                        "listed in the warnings and the results are written as usual")
    parser.add_argument("--cases", default=None, metavar="TEXT[,TEXT]",
                        help="run only the grid's cases whose 'label workload' (e.g. 'B8 T512 I32 H64 "
                        "train') contains one of these comma-separated texts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: the cores of this process, "
                        "which XLA's CPU client uses too)")
    parser.add_argument("--isa", choices=("avx2",), default=None,
                        help="run every peer as on a CPU without AVX-512: lstm_jax's native kernels, "
                        "XLA (its GEMMs in YNNPACK and its generated code) and PyTorch (oneDNN, MKL, "
                        "ATen) narrowed to AVX2 in this process (benchmarks/isa_emulation.py)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list-peers", action="store_true", help="list peers and exit")
    return parser  # fmt: skip


def select_cases(grid, texts: str):
    """``grid`` with only the cases whose ``"label workload"`` contains one of the
    comma-separated ``texts``; a ValueError names the texts that matched nothing."""
    wanted = [text.strip() for text in texts.split(",") if text.strip()]
    if not wanted:
        raise ValueError(f"--cases needs at least one text, got {texts!r}.")
    names = [f"{case.config.label} {case.workload}" for case in grid.cases]
    unmatched = [text for text in wanted if not any(text in name for name in names)]
    if unmatched:
        raise ValueError(f"--cases {unmatched} matched none of the {grid.name} grid's cases: {names}")
    cases = tuple(case for case, name in zip(grid.cases, names) if any(t in name for t in wanted))
    return dataclasses.replace(grid, cases=cases)


def jax_devices() -> str:
    import jax

    return ", ".join(str(d) for d in jax.devices())


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    emulation = None
    if args.isa is not None:
        from benchmarks import isa_emulation

        try:
            emulation = isa_emulation.emulate(args.isa)
        except (ValueError, RuntimeError) as error:
            print(f"error: --isa {args.isa}: {error}", file=sys.stderr)
            return 2

    from benchmarks import grid as grid_lib
    from benchmarks import peers as peers_lib
    from benchmarks import report, runner
    from benchmarks.machine import busy_warning, load_info, machine_info, others_warning, run_info, versions

    try:
        peers = peers_lib.select_peers(args.peers, torch_threads=args.torch_threads)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list_peers:
        for peer in peers:
            reason = peer.unavailable()
            print(f"{peer.name:24s} {peer.description}" + (f"  [unavailable: {reason}]" if reason else ""))
        return 0
    if args.grid == "device" and peers_lib.platform() == "cpu":
        print("error: --device measures a GPU or TPU, but JAX sees only CPU devices "
              f"({jax_devices()}); run it on an accelerator machine, or use --quick / --full "
              "for the CPU grids.", file=sys.stderr)  # fmt: skip
        return 2
    grid = grid_lib.GRIDS[args.grid]()
    if args.case_budget is not None:
        grid = dataclasses.replace(grid, budget_s=args.case_budget)
    if args.cases is not None:
        try:
            grid = select_cases(grid, args.cases)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    out_dir = args.out or default_out_dir(args.grid)
    machine = machine_info()
    load_start = load_info()
    start = time.perf_counter()
    time_limit_s = None if args.time_limit is None else 60.0 * args.time_limit
    results = runner.run(grid, peers, seed=args.seed, progress=not args.no_progress,
                         time_limit_s=time_limit_s)  # fmt: skip
    load_end = load_info()
    if results.get("others_cpu") is not None:
        warnings = [w for w in (others_warning(results["others_cpu"], machine["cores"]),) if w]
    else:
        warnings = [w for w in (busy_warning(load_start, machine["cores"]),
                                busy_warning(load_end, machine["cores"])) if w]  # fmt: skip
    if results["cases_not_run"]:
        warnings.append(
            f"--time-limit {args.time_limit:g} min reached: {len(results['cases_not_run'])} of "
            f"{len(grid.cases)} cases not run ({', '.join(results['cases_not_run'])})"
        )
    warnings = list(dict.fromkeys(warnings)) + spread_warnings(results["rows"])
    results = {
        "machine": machine,
        "versions": versions(),
        **run_info(["python -m benchmarks", *argv]),
        "load": {"start": load_start, "end": load_end},
        "isa_emulation": emulation,
        "warnings": warnings,
        **results,
    }
    results = report.write(results, out_dir)
    table = report.markdown(results)
    print(table[: table.index("## Step time")].rstrip())
    for warning in warnings[:_SHOWN_WARNINGS]:
        print(f"warning: {warning}", file=sys.stderr)
    if len(warnings) > _SHOWN_WARNINGS:
        print(f"warning: ... and {len(warnings) - _SHOWN_WARNINGS} more (results.md lists them)",
              file=sys.stderr)  # fmt: skip
    out = os.path.abspath(out_dir)
    print(f"\nresults written to {out}/ (results.json, results.md, {', '.join(results['plots'])}) "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)  # fmt: skip
    return 0

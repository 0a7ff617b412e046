"""Training throughput: the project's loop against a reference-style baseline, images per second.

One training step is Algorithm 1 on a batch of 128 MNIST images (Q step, then VAE step, lambda_mi > 0,
Gaussian(16) + categorical(10) latent, MI target = the categorical code), on the CPU.

  baseline-conv  the public reference code's loop design: torchvision MNIST with a per-sample ToTensor()
                 behind a DataLoader(batch_size=128, shuffle=True); the Q step runs its own VAE forward
                 and the VAE step a second one. Same VAE, Q and objective functions as the project
                 (conv backbone, contiguous memory format), so the ratio isolates the loop design.
  vmistudy-conv  `Trainer.train_step` on batches indexed from the in-memory uint8 tensors, as
  vmistudy-mlp   `Trainer.train_epoch` draws them: one VAE forward per batch (channels_last for conv).
  solo-mlp-x6    six mlp models trained one after another by solo Trainers, a step of each in turn: 3 seeds,
                 each at lambda_mi = 1 and beside its lambda_mi = 0 twin, as a study's configuration trains them;
  bundle-mlp-x6  the same six as one trial bundle (`vmistudy.bundle`): one vectorized step for all six. Its
                 goal is 2x the images/s of solo-mlp-x6 on the same cores, 10x on a GPU; both are also given
                 as trials per device-hour (a trial: studies/quick.yaml's 6 epochs of 8,000 images, training).

With `--device cuda` the project's rows run on the GPU, their data on it; the baseline, a CPU DataLoader
loop, and the CPU's FLOP ceiling are left out.

The Trainer's Adam is torch's fused one (the same algorithm, up to rounding) where the baseline keeps the
default, as the reference code does; it counts in the ratio, as channels_last does.

Beside the rates it prints the matmul and convolution FLOPs of one step (forward and backward, counted by
torch's FlopCounterMode), the GFLOP/s each configuration reaches, and the GFLOP/s of a large float32
matmul measured in the same run (best of 5): the ceiling those kernels can reach on this CPU. The FLOP
ratio is the speed-up that removing work alone can give; the rest has to come from faster kernels.

    python -m benchmarks.throughput [--data ROOT] [--seconds S] [--threads N] [--device cpu|cuda]

Timings vary by machine and load; tests/test_benchmarks.py checks the FLOP accounting, never a timing.
"""
from __future__ import annotations

import math
import shlex
import sys
import time
from typing import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from vmistudy import config, data as datasets
from vmistudy.bundle import Bundle
from vmistudy.cli import ArgumentParser, command
from vmistudy.config import StudySpec
from vmistudy.errors import InputError
from vmistudy.networks import mean_image
from vmistudy.objective import elbo_terms, mi_lower_bound, mi_targets, target_entropy, temperature
from vmistudy.trainer import Trainer, build_q, build_vae, seeds

BATCH = 128
TARGETS = {"vmistudy-conv": 2.0, "vmistudy-mlp": 10.0}  # minimum ratio to baseline-conv
BUNDLE_GOALS = {"cpu": 2.0, "cuda": 10.0}  # minimum ratio of bundle-mlp-x6 to solo-mlp-x6, by device
TRIAL_IMAGES = 6 * 8000  # the images a trial of studies/quick.yaml trains on: 6 epochs of 8,000
MEMBERS = [(seed, lambda_mi) for seed in range(3) for lambda_mi in (1.0, 0.0)]  # 3 seeds, each beside its twin


def study(root: str | None, backbone: str, threads: int, seed: int = 0, lambda_mi: float = 1.0,
          device: str = "cpu") -> StudySpec:
    return config.validate({
        "data": {"name": "mnist", "root": root},
        "model": {"backbone": backbone, "gaussian_dims": 16, "categories": 10},
        "train": {"batch_size": BATCH, "device": device, "threads": threads, "seed": seed},
        "mi": {"lambda_mi": lambda_mi, "categorical": True},
    }, source="--data")


def members(root: str | None, threads: int, device: str = "cpu") -> list[StudySpec]:
    """The six mlp models of solo-mlp-x6 and bundle-mlp-x6."""
    return [study(root, "mlp", threads, seed, lambda_mi, device) for seed, lambda_mi in MEMBERS]


def project_steps(spec: StudySpec, data: datasets.ImageData) -> Iterator[int]:
    """The body of `Trainer.train_epoch`, epoch after epoch; yields the images of each step."""
    trainer = Trainer(spec.recipe, data)
    trainer.vae.train()
    trainer.q.train()
    images = trainer.data.train_images
    totals = torch.zeros(2, device=trainer.device)
    while True:
        for index in datasets.batch_indices(len(images), spec.train.batch_size, trainer.data_rng):
            x = trainer.images(images[index.to(trainer.device)])
            totals += trainer.train_step(x) * len(index)
            yield len(index)


def solo_steps(specs: list[StudySpec], data: datasets.ImageData) -> Iterator[int]:
    """Each spec's `project_steps` in turn, one step of each per step; yields the images of all."""
    runs = [project_steps(spec, data) for spec in specs]
    while True:
        yield sum(next(steps) for steps in runs)


def bundle_steps(specs: list[StudySpec], data: datasets.ImageData) -> Iterator[int]:
    """The body of `Bundle.train_epoch`, epoch after epoch; yields the images of each step, all members'."""
    bundle = Bundle.fresh([spec.recipe for spec in specs], data)
    images = bundle.members[0].data.train_images
    while True:
        orders = [datasets.batch_indices(len(images), specs[0].train.batch_size, t.data_rng) for t in bundle.members]
        for index in zip(*orders):
            index = torch.stack(index).to(images.device)
            bundle.train_step(datasets.as_float(images[index]))
            yield index.numel()


def baseline_steps(spec: StudySpec) -> Iterator[int]:
    """The reference loop design: DataLoader of per-sample ToTensor(), two VAE forwards per batch."""
    from torchvision import datasets as tv, transforms

    dataset = tv.MNIST(str(spec.data.resolved_root()), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec.train.batch_size, shuffle=True)
    shape = tuple(dataset[0][0].shape)
    vae, q = build_vae(spec, shape), build_q(spec, shape)  # contiguous memory format, as the reference
    vae_parameters = list(vae.parameters())
    vae_opt = torch.optim.Adam(vae_parameters, lr=spec.train.lr)
    q_opt = torch.optim.Adam(q.parameters(), lr=spec.train.q_lr)
    rng = torch.Generator().manual_seed(seeds(spec.train.seed)["sampling"])
    vae.train()
    q.train()
    step = 0
    while True:
        for x, _ in loader:
            tau = temperature(step, spec.train.temperature)
            # Q step on its own VAE forward, its outputs detached
            out = vae(x, tau, rng)
            targets = (mean_image(out.logits), *mi_targets(out, spec.mi))
            detached = [t.detach() if t is not None else None for t in targets]
            q_loss = -sum(q.log_prob(*detached).values()).mean()
            q_opt.zero_grad(set_to_none=True)
            q_loss.backward()
            q_opt.step()
            # VAE step on a second forward
            out = vae(x, tau, rng)
            entropies = target_entropy(spec.mi, out.posterior)
            log_q = q.log_prob(mean_image(out.logits), *mi_targets(out, spec.mi))
            loss = elbo_terms(out, x, spec.model).loss(spec.train, step) - spec.mi.lambda_mi * mi_lower_bound(
                log_q, entropies)
            vae_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=vae_parameters)
            vae_opt.step()
            if not torch.isfinite(loss):
                raise RuntimeError(f"baseline diverged at step {step}")
            step += 1
            yield x.shape[0]


def measure(runs: dict[str, Iterator[int]], seconds: float, warmup: float, rounds: int, device: str = "cpu"
            ) -> dict[str, list[tuple[int, float]]]:
    """(images, seconds) of each configuration in each round, after `warmup` seconds (at least 5 steps) each.

    The configurations take turns, `seconds / rounds` at a time and in a rotating order, so that a
    change in the machine's load while the benchmark runs falls on all of them alike. On a GPU a round
    ends when its queued work has: the clock is read after a synchronize.
    """
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    for steps in runs.values():
        start, n = time.perf_counter(), 0
        while n < 5 or time.perf_counter() - start < warmup:
            next(steps)
            n += 1
        sync()
    names, share = list(runs), seconds / rounds
    results: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            images, start = 0, time.perf_counter()
            while time.perf_counter() - start < share:
                images += next(runs[name])
            sync()
            results[name].append((images, time.perf_counter() - start))
    return results


def flops_per_image(steps: Iterator[int]) -> float:
    """Matmul and convolution FLOPs of one training step, forward and backward, per image."""
    with FlopCounterMode(display=False) as counter:
        images = next(steps)
    return counter.get_total_flops() / images


def matmul_gflops(n: int = 1024, repeats: int = 10, trials: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul, best of `trials`: what the CPU's best kernel reaches."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 * repeats / best / 1e9


def cpu_stall_seconds() -> float | None:
    """Seconds some task waited for a CPU since boot (Linux pressure stall information), None if unknown."""
    try:
        some = open("/proc/pressure/cpu").readline().split()
        return int(dict(f.split("=") for f in some[1:])["total"]) / 1e6
    except (OSError, KeyError, ValueError):
        return None


def _check(args) -> None:
    """The timings' arguments, before anything is loaded."""
    if not (math.isfinite(args.seconds) and args.seconds > 0 and math.isfinite(args.warmup) and args.warmup >= 0):
        raise InputError("--seconds must be a finite number > 0, --warmup one >= 0")
    if (args.rounds is not None and args.rounds < 1) or args.threads < 1:
        raise InputError("--rounds and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU here; run it where one is, or with --device cpu")


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0], examples=[
        "python -m benchmarks.throughput",
        "python -m benchmarks.throughput --seconds 5 --warmup 1 --threads 1"])
    parser.add_argument("--data", default=None,
                        help="folder holding MNIST/raw (default: $VMISTUDY_DATA, then the cache)")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds per configuration first")
    parser.add_argument("--rounds", type=int, default=None, help="turns per configuration (default: one per 2 s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for every configuration")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the project's rows train (cuda: the baseline is left out)")
    args = parser.parse_args(argv)
    _check(args)
    rounds = args.rounds or max(1, round(args.seconds / 2))

    torch.set_num_threads(args.threads)
    device = args.device
    specs = {b: study(args.data, b, args.threads, device=device) for b in ("conv", "mlp")}
    data = datasets.load(specs["conv"].data)
    stall_before, start = cpu_stall_seconds(), time.perf_counter()
    print(f"command: {shlex.join([sys.executable, '-m', 'benchmarks.throughput', *sys.argv[1:]])}")
    on = torch.cuda.get_device_name() if device == "cuda" else "the CPU"
    print(f"torch {torch.__version__} on {on}, threads {torch.get_num_threads()}, batch {BATCH}, {args.warmup:g} s "
          f"warm-up then {args.seconds:g} s timed per configuration in {rounds} interleaved rounds", flush=True)
    six = members(args.data, args.threads, device)
    runs = {"baseline-conv": baseline_steps(specs["conv"])} if device == "cpu" else {}
    runs.update({"vmistudy-conv": project_steps(specs["conv"], data),
                 "vmistudy-mlp": project_steps(specs["mlp"], data),
                 "solo-mlp-x6": solo_steps(six, data),
                 "bundle-mlp-x6": bundle_steps(six, data)})
    flops = {name: flops_per_image(steps) for name, steps in runs.items()}
    results = measure(runs, args.seconds, args.warmup, rounds, device)
    rate = {name: sum(i for i, _ in r) / sum(t for _, t in r) for name, r in results.items()}
    base = rate.get("baseline-conv")  # none on a GPU
    _table(results, rate, flops, base)
    if base:
        _against_the_baseline(results, rate, flops, base)
    _bundle(results, rate, device)
    stall_after = cpu_stall_seconds()
    if stall_before is not None and stall_after is not None:
        stalled = (stall_after - stall_before) / (time.perf_counter() - start)
        print(f"\nCPU stall (tasks waiting for a core) {100 * stalled:.1f}% of the run"
              + (": other work was running, the timings are unreliable" if stalled > 0.05 else ""))


def _table(results: dict, rate: dict, flops: dict, base: float | None) -> None:
    """A row per configuration: images/s (overall and per round), FLOPs, GFLOP/s; against the baseline if any."""
    print(f"\n{'configuration':<14} {'images/s':>9} {'per round':>15} {'MFLOP/image':>12} {'GFLOP/s':>8}"
          + (f" {'vs baseline':>12} {'target':>7}  met" if base else ""))
    for name, r in results.items():
        low, high = min(i / t for i, t in r), max(i / t for i, t in r)
        line = (f"{name:<14} {rate[name]:9.0f} {f'{low:.0f}-{high:.0f}':>15} {flops[name] / 1e6:12.1f} "
                f"{rate[name] * flops[name] / 1e9:8.1f}")
        if base:
            line += f" {rate[name] / base:11.2f}x"
        if base and name in TARGETS:
            line += f" {TARGETS[name]:6.1f}x  {'yes' if rate[name] / base >= TARGETS[name] else 'NO'}"
        print(line)


def _against_the_baseline(results: dict, rate: dict, flops: dict, base: float) -> None:
    """What the targets against baseline-conv need, and what the CPU's best matmul allows the bundle."""
    peak = matmul_gflops()
    work = flops["baseline-conv"] / flops["vmistudy-conv"]
    target = TARGETS["vmistudy-conv"]
    needed = target * base * flops["vmistudy-conv"] / 1e9
    print(f"\nThe baseline does {work:.2f}x the FLOPs of vmistudy-conv per image (one more VAE forward). The "
          f"{target:g}x target needs vmistudy-conv at {needed:.1f} GFLOP/s: {100 * needed / peak:.0f}% "
          f"of the best float32 matmul on this CPU ({peak:.1f} GFLOP/s, 1024 x 1024).")
    met = all(rate[name] / base >= target for name, target in TARGETS.items())
    print(f"targets (conv >= {TARGETS['vmistudy-conv']:g}x, mlp >= {TARGETS['vmistudy-mlp']:g}x baseline-conv) "
          f"met: {'yes' if met else 'no'}")
    best = {name: max(i / t for i, t in results[name]) for name in ("bundle-mlp-x6", "solo-mlp-x6")}
    # the bundle removes per-step work (Python, dispatch, small kernels), not FLOPs: were its matmuls at the
    # 1024 x 1024 rate and the rest free, it would reach `ceiling` times the solo rate (of its best round)
    ceiling = peak / (best["solo-mlp-x6"] * flops["bundle-mlp-x6"] / 1e9)
    print(f"\nThe bundle does {flops['bundle-mlp-x6'] / flops['solo-mlp-x6']:.2f}x the FLOPs per image of the six "
          f"solo models; with nothing but its matmuls, at {peak:.1f} GFLOP/s, it would reach {ceiling:.1f}x them.")


def _bundle(results: dict, rate: dict, device: str) -> None:
    """bundle-mlp-x6 against solo-mlp-x6, against its goal on this device, and in trials per device-hour."""
    bundled, goal = rate["bundle-mlp-x6"] / rate["solo-mlp-x6"], BUNDLE_GOALS[device]
    best = {name: max(i / t for i, t in results[name]) for name in ("bundle-mlp-x6", "solo-mlp-x6")}
    print(f"\nbundle-mlp-x6 vs solo-mlp-x6 (the same six models, one vectorized step against six): {bundled:.2f}x; "
          f"goal on {device} {goal:g}x: {'met' if bundled >= goal else 'not met'} (their best rounds, the nearest "
          f"to a quiet machine: {best['bundle-mlp-x6'] / best['solo-mlp-x6']:.2f}x)")
    for name in ("solo-mlp-x6", "bundle-mlp-x6"):
        print(f"{name}: {rate[name] * 3600 / TRIAL_IMAGES:.0f} trials per {device}-hour (a trial: studies/quick.yaml's "
              f"{TRIAL_IMAGES:,} training images)")


if __name__ == "__main__":
    main()

"""One trial: Algorithm 1 of the thesis, epoch by epoch, with resumable state.

Per minibatch, one VAE forward serves both steps (the VAE does not change between them):
  1. Q step: maximize E log Q(c^|x~) over Q, on detached c^ and x~;
  2. VAE step: minimize -(ELBO + lambda_mi * MI) over the encoder and decoder with Q held fixed;
     the MI gradient reaches them through c^ and x~.
Q is trained even at lambda_mi = 0, so every model carries an MI estimate. Through train.pretrain_epochs step 2
leaves out the MI term (and a mixture prior's means); then `start_prior` places those means (VaDE's start).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import data as datasets
from .config import Recipe
from .latents import DiagonalGaussian
from .metrics import accuracy_majority, cluster_log_var, cluster_scores, frozen_mi, kmeans, split_posterior
from .networks import VAE, Posterior, QNetwork, inference, mean_image
from .objective import (elbo_terms, invariance_mi, mi_lower_bound, mi_targets, mi_warmup, target_entropy,
                        temperature, virtual_adversarial)

EVAL_BATCH = 1000
EVAL_SEED = 2024  # evaluation draws are the same at every epoch: a metric is a function of the weights
PRIOR_PARAMETERS = frozenset({"prior_means", "prior_log_var"})  # a mixture prior's components (networks.VAE)

Progress = Callable[[int, int], None]  # called with (batches done, batches in the epoch)


class DivergenceError(RuntimeError):
    """A loss term became NaN or infinite."""

    def __init__(self, step: int, term: str):
        super().__init__(f"training diverged at step {step}: {term} is not finite")
        self.step, self.term = step, term


def seeds(seed: int) -> dict[str, int]:
    """Independent seeds for VAE init, Q init, data order and sampling, all derived from one."""
    states = np.random.SeedSequence(seed).generate_state(4)
    return dict(zip(("vae_init", "q_init", "data", "sampling"), map(int, states)))


def build_vae(recipe: Recipe, shape) -> VAE:
    """The VAE depends only on the model spec and the seed: same seed, same initial weights, whatever lambda."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds(recipe.train.seed)["vae_init"])
        return VAE(recipe.model, shape)


def build_q(recipe: Recipe, shape) -> QNetwork:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds(recipe.train.seed)["q_init"])
        return QNetwork(recipe.model.backbone, shape, recipe.model.hidden, len(recipe.mi.gaussian),
                        recipe.model.categories if recipe.mi.categorical else 0)


def autocast(recipe: Recipe, device: torch.device) -> contextlib.AbstractContextManager:
    """The context of a training step's forward passes: bfloat16 autocast where train.precision asks for it
    (torch runs matmuls and convolutions in bf16, softmaxes, logs and the likelihood in float32), a no-op
    otherwise (not a disabled autocast, which would switch off one a caller holds). Backward passes and
    optimizer steps run outside it, as torch advises."""
    if recipe.train.precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class Epoch:
    """What one finished epoch hands its driver: the metrics, and what this epoch is for the loop's end."""
    number: int
    metrics: dict[str, float]
    last: bool  # the run's last epoch: its metrics hold the frozen MI bounds; its figures and model are final
    figures: bool  # figures are due: every figures_every epochs, and at the last


class Trainer:
    """One model trained with Algorithm 1 (the module docstring), epoch by epoch, with resumable state.

    recipe: the data, model, train and MI sections of a validated study (`StudySpec.recipe`); the trainer
        reads nothing else, and sets no process-wide state (torch threads are the driver's).
    data: the images and labels (`data.load(recipe.data)`), moved to the trainer's device; labels are read
        only to score the clusters.
    """

    def __init__(self, recipe: Recipe, data: datasets.ImageData):
        self.recipe = recipe
        self.device = pick_device(recipe.train.device)
        self.data = data.to(self.device)
        shape = data.image_shape
        self.memory_format = (torch.channels_last if recipe.model.backbone == "conv" and recipe.model.channels_last
                              else torch.contiguous_format)
        self.vae = build_vae(recipe, shape).to(self.device, memory_format=self.memory_format)
        self.q = build_q(recipe, shape).to(self.device, memory_format=self.memory_format)
        self.vae_parameters = list(self.vae.parameters())
        # fused: Adam's update in one pass over each parameter (CPU and CUDA), 4x faster than the
        # per-tensor default on the conv model's 10M parameters; the same algorithm, up to rounding
        self.vae_opt = torch.optim.Adam(self.vae_parameters, lr=recipe.train.lr, fused=True)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=recipe.train.q_lr, fused=True)
        s = seeds(recipe.train.seed)
        self.data_rng = torch.Generator().manual_seed(s["data"])
        self.sample_rng = torch.Generator(self.device).manual_seed(s["sampling"])
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.test_clusters: torch.Tensor | None = None  # argmax q(c|x) of the test split at the last evaluation

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return datasets.as_float(images).contiguous(memory_format=self.memory_format)

    @property
    def temperature(self) -> float:
        return temperature(self.step, self.recipe.train.temperature)

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 on one minibatch; returns [VAE loss, MI bound] as a detached tensor."""
        recipe = self.recipe
        with autocast(recipe, self.device):
            out = self.vae(x, self.temperature, self.sample_rng)
            x_tilde = mean_image(out.logits)
            z_hat, c_hat = mi_targets(out, recipe.mi)
            entropies = target_entropy(recipe.mi, out.posterior)
            detached = [t.detach() if t is not None else None for t in (x_tilde, z_hat, c_hat)]
            terms = elbo_terms(out, x, recipe.model)
            log_q = self.q.log_prob(*detached)
        self._check_finite({"recon": terms.recon, "kl_continuous": terms.kl_continuous,
                            "kl_categorical": terms.kl_categorical, **{f"log_q_{p}": v for p, v in log_q.items()}})
        q_loss = -sum(log_q.values()).mean()
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()

        loss = terms.loss(recipe.train, self.step)
        if recipe.mi.lambda_mi > 0 and not self.pretraining:
            with autocast(recipe, self.device):
                mi = mi_lower_bound(self.q.log_prob(x_tilde, z_hat, c_hat), entropies)
                if recipe.mi.invariance.weight:
                    copies = self.code_of_copies(x, self.sample_rng, out.posterior.categorical.log_probs.detach())
                    mi = mi + recipe.mi.invariance.weight * invariance_mi(out.posterior.categorical.probs, copies)
            self._check_finite({"mi_lower_bound": mi})
            loss = loss - recipe.mi.lambda_mi * mi_warmup(self.step, recipe.mi) * mi
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=self._trained_parameters())
        self.vae_opt.step()
        self.step += 1
        with torch.no_grad():
            return torch.stack([loss, mi_lower_bound(log_q, entropies)])

    def code_of_copies(self, x: torch.Tensor, generator: torch.Generator, log_p: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """q(c'|x'), x' a copy of each image of x as mi.invariance says: its adversarial copy given x's code
        `log_p` in training, else (and for the invariance_mi metric, always) an affine one drawn at random."""
        spec = self.recipe.mi.invariance
        if spec.copies == "adversarial" and log_p is not None:
            copies = x + virtual_adversarial(x, log_p, self.log_q_code, spec.epsilon, generator)
        else:
            copies = datasets.random_affine(x, spec.rotate, spec.translate, spec.scale, generator)
        return self.vae.encode(copies).categorical.probs

    def log_q_code(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).categorical.log_probs

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop before an optimizer step spreads a NaN or inf into the weights, naming the term (one sync)."""
        sums = torch.stack([t.detach().sum() for t in terms.values()])
        if not torch.isfinite(sums).all():
            bad = next(name for name, s in zip(terms, sums) if not torch.isfinite(s))
            raise DivergenceError(self.step + 1, bad)

    def epochs(self, figures_every: int = 0, progress: Callable[[int], Progress] | None = None,
               notify: Callable[[str], None] | None = None) -> Iterator[Epoch]:
        """Train from the current epoch to train.epochs, yielding each finished epoch: every driver's loop.

        The one place that decides what the run's end adds: after the last epoch, the bounds of a fresh Q on
        the frozen VAE (mi.fresh_q_steps, announced first through `notify` since they take a while) join its
        metrics, and its figures and model are the final ones. `progress(epoch)` gives a per-batch callback.
        """
        fresh_q_steps, epochs = self.recipe.mi.fresh_q_steps, self.recipe.train.epochs
        if fresh_q_steps and notify and self.epoch < epochs:
            notify(f"after epoch {epochs}: a fresh Q is fitted for {fresh_q_steps} steps "
                   "(mi.fresh_q_steps, thesis eq. 4.8)")
        while self.epoch < epochs:
            yield self.finish_epoch(self.train_epoch(progress(self.epoch + 1) if progress else None), figures_every)

    def finish_epoch(self, metrics: dict[str, float], figures_every: int) -> Epoch:
        """The epoch just recorded, with what the run's end adds if it was the last (see `epochs`)."""
        last = self.epoch == self.recipe.train.epochs
        if last and self.recipe.mi.fresh_q_steps:
            metrics.update(self.frozen_mi_lower_bounds())  # the history's entry too: checkpoints keep them
        return Epoch(self.epoch, metrics, last, last or bool(figures_every) and self.epoch % figures_every == 0)

    @property
    def pretraining(self) -> bool:
        """In train.pretrain_epochs: the ELBO alone, a mixture prior's means held at the origin."""
        return self.epoch < self.recipe.train.pretrain_epochs

    def held_parameters(self) -> set[str]:
        """Names of the VAE's parameters step 2 leaves alone now: a mixture prior's components while pretraining
        holds them at N(0, I) (they get no gradient, so Adam leaves them too)."""
        if self.vae.prior_means is None or not self.pretraining:
            return set()
        return set(PRIOR_PARAMETERS)

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """Step 2's parameters: all of the VAE's but the held ones."""
        held = self.held_parameters()
        return [p for name, p in self.vae.named_parameters() if name not in held] if held else self.vae_parameters

    def prior_starts(self) -> bool:
        """Whether this epoch is the first after pretraining, which starts a mixture prior (`start_prior`)."""
        pretrain = self.recipe.train.pretrain_epochs
        return bool(pretrain) and self.epoch == pretrain and self.vae.prior_means is not None

    def start_centres(self) -> tuple[DiagonalGaussian, torch.Tensor]:
        """The training split's z posteriors (on the CPU) and the k-means centres of their means, drawn from the
        trial's seed, so that a twin (the same pretraining) starts from the same centres."""
        with inference(self.vae):
            z = split_posterior(lambda x: self.vae.encode(self.images(x)), self.data.train_images).gaussian
        z = DiagonalGaussian(z.mean.float().cpu(), z.log_var.float().cpu())
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        return z, kmeans(z.mean, self.vae.k, generator)

    def start_prior(self) -> None:
        """VaDE's start from a pretrained model: mu_c := the k-means centres of `start_centres`; learned
        variances start at each cluster's spread (its posteriors' moment-matched variance)."""
        z, centres = self.start_centres()
        with torch.no_grad():
            self.vae.prior_means.copy_(centres)
            if self.vae.prior_log_var is not None:
                self.vae.prior_log_var.copy_(cluster_log_var(z, torch.cdist(z.mean, centres).argmin(1), self.vae.k))

    def train_epoch(self, progress: Progress | None = None) -> dict[str, float]:
        """One pass over the training set, then the test-split metrics; returns and records them."""
        if self.prior_starts():
            self.start_prior()
        self.vae.train()
        self.q.train()
        images = self.data.train_images
        batches = list(datasets.batch_indices(len(images), self.recipe.train.batch_size, self.data_rng))
        totals = torch.zeros(2, device=self.device)
        start = time.perf_counter()
        for i, index in enumerate(batches):
            x = self.images(images[index.to(self.device)])
            totals += self.train_step(x) * len(index)
            if progress:
                progress(i + 1, len(batches))
        return self.end_epoch(totals, time.perf_counter() - start, start)

    def end_epoch(self, totals: torch.Tensor, seconds: float, start: float) -> dict[str, float]:
        """Count a finished training pass (its summed [loss, MI bound], its `seconds`, begun at `start`),
        evaluate and record: whoever made the pass, this trainer or a bundle (`bundle.py`) of which it is one."""
        self.epoch += 1
        n = len(self.data.train_images)
        train_loss, train_mi = (totals / n).tolist()
        metrics = {"epoch": self.epoch, "step": self.step, "temperature": self.temperature,
                   "train_loss": train_loss, "train_mi_lower_bound": train_mi,
                   "images_per_second": n / seconds, **self.evaluate()}
        metrics["epoch_seconds"] = time.perf_counter() - start  # training and evaluation, not a study's overhead
        self.history.append(metrics)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Test-split metrics, per image, nats; accuracy/NMI of argmax q(c|x) against the labels."""
        rng = torch.Generator(self.device).manual_seed(EVAL_SEED)
        copies_rng = torch.Generator(self.device).manual_seed(EVAL_SEED + 1)  # apart: the other draws stay as they were
        sums: dict[str, torch.Tensor] = {}
        posteriors, copies, n = [], [], len(self.data.test_images)

        def add(name: str, value: torch.Tensor) -> None:
            sums[name] = sums.get(name, 0) + value.sum(0)

        with inference(self.vae, self.q):
            for images in self.data.test_images.split(EVAL_BATCH):
                x = self.images(images)
                out = self.vae(x, self.temperature, rng)
                terms = elbo_terms(out, x, self.recipe.model)
                for name in ("recon", "kl_continuous", "kl_categorical", "elbo"):
                    add(name, getattr(terms, name))
                if terms.kl_per_dim is not None:
                    add("kl_per_dim", terms.kl_per_dim)
                targets = mi_targets(out, self.recipe.mi)
                for part, log_q in self.q.log_prob(mean_image(out.logits), *targets).items():
                    add(f"log_q_{part}", log_q)
                posteriors.append(out.posterior)
                if self.vae.k:
                    copies.append(self.code_of_copies(x, copies_rng))
            purity = {"accuracy_majority_train": self.train_purity()} if self.vae.k else {}

        means = {k: v / n for k, v in sums.items()}
        metrics = {k: v.item() for k, v in means.items() if k != "kl_per_dim" and not k.startswith("log_q_")}
        if "kl_per_dim" in means:
            metrics.update({f"kl_z{i}": v for i, v in enumerate(means["kl_per_dim"].tolist())})
        posterior = Posterior.cat(posteriors)  # of the split: its mixture is the z^ the bound's samples follow
        entropies = target_entropy(self.recipe.mi, posterior)
        bounds = {f"mi_lower_bound_{p}": means[f"log_q_{p}"].item() + float(h) for p, h in entropies.items()}
        metrics.update(bounds, mi_lower_bound=sum(bounds.values()))
        if posterior.categorical:
            self.test_clusters = posterior.categorical.probs.argmax(-1)
            metrics.update(cluster_scores(self.data.test_labels, self.test_clusters), **purity,
                           invariance_mi=invariance_mi(posterior.categorical.probs, torch.cat(copies)).item())
        return metrics

    def frozen_mi_lower_bounds(self) -> dict[str, float]:
        """The bounds a fresh Q finds on the frozen VAE (thesis eq. 4.8), as `python -m vmistudy.evaluate` prints them.

        The Q trained alongside the VAE lags it at every step; a fresh one, fitted to convergence, does not.
        """
        shape = self.data.image_shape
        results = frozen_mi(self.vae, self.recipe.mi, self.data,
                            lambda: build_q(self.recipe, shape).to(self.device), self.recipe.mi.fresh_q_steps)
        return {f"frozen_mi_lower_bound_{path}": results[path]["mi_lower_bound"] for path in ("encoder", "prior")}

    def train_purity(self) -> float:
        """Majority-vote purity of argmax q(c|x) on the training split: the number the thesis reports."""
        clusters = self.clusters(self.data.train_images)
        return accuracy_majority(self.data.train_labels.cpu().numpy(), clusters.cpu().numpy())

    def clusters(self, images: torch.Tensor) -> torch.Tensor:
        """argmax q(c|x) of each image (as stored, uint8)."""
        with inference(self.vae):
            return torch.cat([self.vae.encode(self.images(batch)).categorical.probs.argmax(-1)
                              for batch in images.split(EVAL_BATCH)])

    def state_dict(self) -> dict:
        return {"spec": self.recipe.model_dump(), "step": self.step, "epoch": self.epoch, "history": self.history,
                "vae": self.vae.state_dict(), "q": self.q.state_dict(),
                "vae_opt": self.vae_opt.state_dict(), "q_opt": self.q_opt.state_dict(),
                "data_rng": self.data_rng.get_state(), "sample_rng": self.sample_rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.q.load_state_dict(state["q"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.q_opt.load_state_dict(state["q_opt"])
        self.data_rng.set_state(state["data_rng"])
        self.sample_rng.set_state(state["sample_rng"])
        self.step, self.epoch, self.history = state["step"], state["epoch"], list(state["history"])


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)

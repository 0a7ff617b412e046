"""Trial bundles: a configuration's replicates and their lambda_mi = 0 twins, trained as one vectorized model.

The members share everything but `train.seed` and `mi.lambda_mi`. Each runs Algorithm 1 exactly as a solo
`Trainer` does: its own initial VAE and Q, data order, Gaussian and Gumbel draws, Adam state and lambda_mi,
so each member IS that solo run, up to float rounding (batched matmuls round differently from single ones).

How: the members' parameters are stacked into tensors [M, ...], and one torch.func.vmap over
`functional_call` runs all M VAEs (then all M Qs) as one batched pass: M models cost one Python step and
one kernel per layer instead of M. The loss is the sum of the members' losses, so one backward gives each
member's slice its own gradient; Adam is elementwise, so one Adam over the stacked parameters is each
member's Adam. Random draws cannot come from a per-member generator inside vmap, so each member's draws
are made ahead on its own generator, in the solo order and shapes (`VAE.noise`).

The members are solo Trainers that the bundle steps instead of letting them step themselves: they keep
what is per member and not vectorized (generators, step and epoch, history, the evaluation path and the
checkpoint format). `member(m)` writes the stacked weights and Adam state back into member m first, so a
member can be evaluated, checkpointed, or trained on alone; a bundle of resumed Trainers resumes the bundle.
Only the mlp backbone, and without the invariance term (mi.invariance): the conv backbone's BatchNorm keeps
running statistics that vmap would have to update per member in place. Pretraining (train.pretrain_epochs) is
each member's as alone: the MI term off and a mixture prior held, then each member's own k-means start.
"""
from __future__ import annotations

import copy
import time
from typing import Iterator

import torch
from torch.func import functional_call, vmap

from . import data as datasets
from .config import AGREEMENT, Recipe
from .errors import InputError
from .metrics import seed_agreement
from .networks import mean_image
from .objective import elbo_terms, mi_lower_bound, mi_targets, mi_warmup, target_entropy, temperature
from .trainer import PRIOR_PARAMETERS, DivergenceError, Epoch, Progress, Trainer, autocast, pick_device

Tensors = dict[str, torch.Tensor]  # a pytree vmap maps over: absent latent parts are absent keys, never None
SHARED_EXCEPT = {"train": {"seed"}, "mi": {"lambda_mi"}}  # what may differ between members


def check_members(recipes: list[Recipe]) -> None:
    """InputError unless the recipes are one configuration's members: equal but for seed and lambda_mi."""
    if not recipes:
        raise InputError("bundle: no members")
    if recipes[0].model.backbone != "mlp":
        raise InputError(f"model.backbone: a bundle trains mlp members only, got {recipes[0].model.backbone!r} "
                         "(the conv backbone's BatchNorm statistics are not vectorized)")
    if recipes[0].mi.invariance.weight:
        raise InputError("mi.invariance.weight: a bundle does not train the invariance term; train solo")
    shared = [_shared(r) for r in recipes]
    for i, other in enumerate(shared[1:], 1):
        if other != shared[0]:
            fields = sorted(f"{section}.{key}" for section in other for key in other[section]
                            if other[section][key] != shared[0][section].get(key))
            raise InputError(f"bundle: member {i} differs from member 0 in {', '.join(fields)}; members may "
                             "differ only in train.seed and mi.lambda_mi")


def _shared(recipe: Recipe) -> dict[str, dict]:
    dump = recipe.model_dump()
    return {section: {k: v for k, v in fields.items() if k not in SHARED_EXCEPT.get(section, ())}
            for section, fields in dump.items()}


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-member tensors stacked [M, ...] in the bundle's layout: a matrix [out, in] (a linear weight, or its
    Adam moments) is held as its transpose, [M, in, out] contiguous, the layout in which vmap's batched linear
    returns the weight's gradient, so that autograd hands it over as it is rather than copying it."""
    stacked = torch.stack(tensors)
    return stacked.transpose(1, 2).contiguous() if stacked.dim() == 3 else stacked


def unstack(stacked: torch.Tensor, m: int) -> torch.Tensor:
    """Member m's tensor out of `stack`'s layout: a contiguous copy, never a view into the bundle."""
    member = stacked[m].T if stacked.dim() == 3 else stacked[m]
    return member.clone(memory_format=torch.contiguous_format)


def stack_leaves(modules: list[torch.nn.Module]) -> Tensors:
    """The modules' parameters stacked, in `stack`'s layout, as new leaves: what the bundle's Adam steps."""
    parameters = [dict(module.named_parameters()) for module in modules]
    return {name: stack([p[name].detach() for p in parameters]).requires_grad_() for name in parameters[0]}


def as_parameters(leaves: Tensors) -> Tensors:
    """The stacked parameters as functional_call reads them, [M, out, in]: views of the leaves, in the graph."""
    return {name: leaf.transpose(1, 2) if leaf.dim() == 3 else leaf for name, leaf in leaves.items()}


def stack_adam(states: list[dict]) -> dict:
    """The members' Adam state dicts as the one state dict of an Adam over their stacked parameters."""
    first = states[0]
    if any(s["state"].keys() != first["state"].keys() for s in states):
        raise InputError("bundle: some members' optimizers have stepped and some not; resume members of one bundle")
    # `step` is the same for all: the members are at the same step, and each made one Adam step per step
    stacked = {i: {k: v.clone() if k == "step" else stack([s["state"][i][k] for s in states])
                   for k, v in state.items()} for i, state in first["state"].items()}
    return {"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])}


def unstack_adam(state: dict, m: int) -> dict:
    """Member m's slice of a stacked Adam's state dict, as its solo Adam's."""
    return {"state": {i: {k: v.clone() if k == "step" else unstack(v, m) for k, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


def _trainers(recipes: list[Recipe], data: datasets.ImageData) -> list[Trainer]:
    check_members(recipes)  # before any model is built
    data = data.to(pick_device(recipes[0].train.device))  # once, not once per member
    return [Trainer(recipe, data) for recipe in recipes]


class Bundle:
    """M members of one configuration trained as one vectorized model (the module docstring).

    members: solo Trainers at the same step, fresh (`Bundle.fresh`) or resumed (`Bundle.resume`); the bundle
    reads the training images of the first (the members' data sections are equal).
    """

    def __init__(self, members: list[Trainer]):
        check_members([t.recipe for t in members])
        if len({(t.step, t.epoch) for t in members}) > 1:
            raise InputError("bundle: the members are at different steps; resume the members of one bundle")
        self.members = members
        first = members[0]
        self.recipe, self.device = first.recipe, first.device
        self.lambda_mi = torch.tensor([t.recipe.mi.lambda_mi for t in members], device=self.device)
        self.with_mi = torch.nonzero(self.lambda_mi > 0).flatten()  # the members that are not twins
        # the architectures functional_call runs, weightless: the weights are the stacked ones
        self.vae, self.q = (copy.deepcopy(module).to("meta") for module in (first.vae, first.q))
        self.vae_leaves = stack_leaves([t.vae for t in members])
        self.q_leaves = stack_leaves([t.q for t in members])
        train = self.recipe.train
        self.vae_opt = torch.optim.Adam(self.vae_leaves.values(), lr=train.lr, fused=True)
        self.q_opt = torch.optim.Adam(self.q_leaves.values(), lr=train.q_lr, fused=True)
        self.vae_opt.load_state_dict(stack_adam([t.vae_opt.state_dict() for t in members]))
        self.q_opt.load_state_dict(stack_adam([t.q_opt.state_dict() for t in members]))
        self.written = dict.fromkeys(range(len(members)), self.step)  # member: the step its trainer holds

    @classmethod
    def fresh(cls, recipes: list[Recipe], data: datasets.ImageData) -> Bundle:
        """Member m starts as `Trainer(recipes[m], data)` does."""
        return cls(_trainers(recipes, data))

    @classmethod
    def resume(cls, recipes: list[Recipe], data: datasets.ImageData, states: list[dict]) -> Bundle:
        """Member m continues from `states[m]`: a checkpoint of `state_dicts`, or a solo Trainer's."""
        members = _trainers(recipes, data)
        for trainer, state in zip(members, states, strict=True):
            trainer.load_state_dict(state)
        return cls(members)

    @property
    def step(self) -> int:
        return self.members[0].step

    @property
    def epoch(self) -> int:
        return self.members[0].epoch

    def epochs(self, figures_every: int = 0) -> Iterator[list[Epoch]]:
        """`Trainer.epochs` for all members at once: from the current epoch to train.epochs, yielding each
        member's finished epoch (the last one with what the run's end adds)."""
        while self.epoch < self.recipe.train.epochs:
            metrics = self.train_epoch()
            self.add_seed_agreement(metrics)
            yield [member.finish_epoch(m, figures_every) for member, m in zip(self.members, metrics)]

    def add_seed_agreement(self, metrics: list[dict[str, float]]) -> None:
        """Into each member's metrics (and so its history), its `seed_agreement` with the other seeds of its
        lambda_mi: one model's other seeds (metrics.seed_agreement, no labels read). Members of one lambda_mi and
        seed are one model (a lambda_mi = 0 configuration's twins are its own runs again), counted once. A seed
        alone at its lambda_mi, and a model without a categorical code, get none."""
        if not self.members[0].vae.k:
            return
        arms: dict[float, dict[int, list[int]]] = {}  # lambda_mi: {seed: its members}
        for m, trainer in enumerate(self.members):
            arms.setdefault(trainer.recipe.mi.lambda_mi, {}).setdefault(trainer.recipe.train.seed, []).append(m)
        for arm in arms.values():
            if len(arm) > 1:
                # the codes each member's evaluation of this epoch took, not a second pass over the test split
                codes = [self.members[same[0]].test_clusters.cpu().numpy() for same in arm.values()]
                for same, agreement in zip(arm.values(), seed_agreement(codes)):
                    for m in same:
                        metrics[m][AGREEMENT] = agreement

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 on one minibatch per member, x [M, B, C, H, W]; returns [M, (VAE loss, MI bound)]."""
        recipe, step = self.recipe, self.step
        tau = temperature(step, recipe.train.temperature)

        def forward(parameters: Tensors, x: torch.Tensor, noise: Tensors):
            out = functional_call(self.vae, parameters, (x, tau), {"noise": (noise.get("z"), noise.get("c"))})
            terms = elbo_terms(out, x, recipe.model)
            targets = dict(zip(("x_tilde", "z_hat", "c_hat"), (mean_image(out.logits), *mi_targets(out, recipe.mi))))
            # vmap returns tensors only: absent targets are left out, a prior entropy (a float) becomes one
            entropies = {part: torch.as_tensor(h, dtype=x.dtype)
                         for part, h in target_entropy(recipe.mi, out.posterior).items()}
            checked = {"recon": terms.recon, "kl_continuous": terms.kl_continuous,
                       "kl_categorical": terms.kl_categorical}
            return (terms.loss(recipe.train, step), {k: t for k, t in targets.items() if t is not None},
                    entropies, checked)

        noise = self.noise(x.shape[1])
        with autocast(recipe, self.device):
            loss, targets, entropies, checked = vmap(forward)(as_parameters(self.vae_leaves), x, noise)
            # the Q step, on detached targets; the sum of the members' losses gives each member its own gradient
            log_q = vmap(self._log_q)(as_parameters(self.q_leaves), {k: t.detach() for k, t in targets.items()})
        self._check_finite({**checked, **{f"log_q_{p}": v for p, v in log_q.items()}})
        q_loss = -sum(log_q.values()).mean(-1).sum()
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.q_opt.step()

        # the VAE step, Q (after its step) held fixed; the MI term for the members with lambda_mi > 0 only, as
        # their solo runs add it: a twin's solo run skips it
        if len(self.with_mi) and not self.members[0].pretraining:
            with autocast(recipe, self.device):
                mi = vmap(lambda q, targets, h: mi_lower_bound(self._log_q(q, targets), h))(
                    *(self._with_mi(tree) for tree in (as_parameters(self.q_leaves), targets, entropies)))
            self._check_finite({"mi_lower_bound": mi}, self.with_mi)
            weight = self.lambda_mi[self.with_mi] * mi_warmup(step, recipe.mi)
            loss = loss.index_add(0, self.with_mi, -weight * mi)
        self.vae_opt.zero_grad(set_to_none=True)
        held = self.members[0].held_parameters()
        loss.sum().backward(inputs=[leaf for name, leaf in self.vae_leaves.items() if name not in held])
        self.vae_opt.step()
        for member in self.members:
            member.step += 1
        with torch.no_grad():
            return torch.stack([loss, vmap(mi_lower_bound)(log_q, entropies)], dim=-1)

    def _with_mi(self, tree: Tensors) -> Tensors:
        """The slices [M', ...] of the members with lambda_mi > 0; all of it when every member has the term."""
        if len(self.with_mi) == len(self.members):
            return tree
        return {k: t[self.with_mi] for k, t in tree.items()}

    def _log_q(self, parameters: Tensors, targets: Tensors) -> Tensors:
        return functional_call(self.q, parameters, (targets["x_tilde"], targets.get("z_hat"), targets.get("c_hat")))

    def noise(self, n: int) -> Tensors:
        """Each member's draws for n images on its own sampling generator, as its solo forward makes them."""
        eps, gumbel = zip(*(t.vae.noise(n, t.sample_rng) for t in self.members))
        return {part: torch.stack(draws) for part, draws in (("z", eps), ("c", gumbel)) if draws[0] is not None}

    def _check_finite(self, terms: Tensors, members: torch.Tensor | None = None) -> None:
        """`Trainer._check_finite` for all members at once (terms [M, ...], or of `members` only), naming the
        term and its member."""
        sums = torch.stack([t.detach().flatten(1).sum(1) if t.dim() > 1 else t.detach() for t in terms.values()])
        if not torch.isfinite(sums).all():
            term, member = (int(i) for i in (~torch.isfinite(sums)).nonzero()[0])
            member = int(members[member]) if members is not None else member
            raise DivergenceError(self.step + 1, f"{list(terms)[term]} of bundle member {member}")

    def train_epoch(self, progress: Progress | None = None) -> list[dict[str, float]]:
        """One pass over the training set per member, each in its own order, then each member's test-split
        metrics through its solo Trainer; returns and records them, one dict per member."""
        if self.members[0].prior_starts():
            self.start_prior()
        images = self.members[0].data.train_images
        orders = [list(datasets.batch_indices(len(images), self.recipe.train.batch_size, t.data_rng))
                  for t in self.members]
        totals = torch.zeros(len(self.members), 2, device=self.device)
        start = time.perf_counter()
        for i, index in enumerate(zip(*orders)):
            index = torch.stack(index).to(self.device)  # [M, B]: one B for all, the orders being permutations
            totals += self.train_step(datasets.as_float(images[index])) * index.shape[1]
            if progress:
                progress(i + 1, len(orders[0]))
        seconds = time.perf_counter() - start
        # a member's images_per_second counts its own images; its epoch_seconds, the pass and its own evaluation
        return [self.member(m).end_epoch(totals[m], seconds, time.perf_counter() - seconds)
                for m in range(len(self.members))]

    def start_prior(self) -> None:
        """`Trainer.start_prior` for each member, on its own pretrained weights and seed; then the bundle's
        stacked prior takes the members' new components."""
        for m in range(len(self.members)):
            self.member(m).start_prior()
        with torch.no_grad():
            for name in PRIOR_PARAMETERS & self.vae_leaves.keys():
                self.vae_leaves[name].copy_(stack([getattr(t.vae, name).detach() for t in self.members]))

    def member(self, m: int) -> Trainer:
        """Member m as a solo Trainer, its weights and Adam state written back from the bundle: to evaluate,
        checkpoint, or go on training alone. Written once per step: an epoch's end evaluates each member, then
        the study checkpoints them."""
        trainer = self.members[m]
        if self.written[m] == self.step:
            return trainer
        with torch.no_grad():
            for module, leaves in ((trainer.vae, self.vae_leaves), (trainer.q, self.q_leaves)):
                for name, parameter in module.named_parameters():
                    parameter.copy_(unstack(leaves[name], m))
        trainer.vae_opt.load_state_dict(unstack_adam(self.vae_opt.state_dict(), m))
        trainer.q_opt.load_state_dict(unstack_adam(self.q_opt.state_dict(), m))
        self.written[m] = self.step
        return trainer

    def state_dicts(self) -> list[dict]:
        """Each member's checkpoint, in the solo Trainer's format: `Trainer.load_state_dict` resumes it."""
        return [self.member(m).state_dict() for m in range(len(self.members))]

"""Batched population training: many same-architecture models as one stacked computation.

Training one small model at a time is bound by per-operation overhead (Python,
dispatch, autograd), not by arithmetic. Stacking the weights of N models along a
leading axis turns N small matrix products into one batched product, so the
overhead is paid once per step for the whole group.

Every model keeps what :func:`genbench.training.train_one` would have given it:

- its initial weights: built by :func:`genbench.training.build_model` under
  ``torch.manual_seed(spec.seed)`` inside a forked RNG, exactly as ``train_one``;
- its noise stream: a private generator holding the global RNG state right after
  the build (CPU) or the CUDA generator seeded with ``spec.seed`` (CUDA), from
  which its dropout masks are drawn with the same calls, shapes and order as the
  sequential path, so the masks are identical;
- its data order: a generator seeded ``spec.seed + 7919``, one ``randperm`` per
  epoch (and the augmentation draws, per model, in order);
- its optimizer hyperparameters (lr and schedule, momentum, weight decay), its
  stop condition and epoch budget: a model that stops leaves the stack, the
  others go on; its final metrics come from :func:`genbench.training.final_metrics`
  on its own rebuilt module, as in ``train_one``.

So a batched model equals its sequential twin to float tolerance (the batched
matrix products round differently); ``tests/test_batched.py`` checks it.

Two backends compute the stacked forward pass: ``bmm`` (hand-batched
``torch.baddbmm`` for MLPs: Flatten / Linear / Tap sequences) and ``vmap``
(``torch.func.functional_call`` under ``vmap``: any buffer-free model). ``auto``
takes ``bmm`` where it applies (faster, see docs/performance-training.md).
Anything else raises :class:`NotBatchable`; the runner then trains the group
one model at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench import taps
from genbench.components import Regularizer
from genbench.data import DataBundle
from genbench.plugins import Registry
from genbench.population import canonical_json
from genbench.suite import TrainRecipe
from genbench.training import TrainResult, build_model, final_metrics, lr_at, stop_reached

log = logging.getLogger("genbench.batched")

# Rows (models x samples) per chunk of the per-epoch evaluation: bounds its memory.
EVAL_ROWS = 1 << 17

# Regularizers whose tap handler the batched engine reproduces, mapped to a function
# giving the handler's drop rate at a tap. Dropout draws
# ``torch.empty_like(a).bernoulli_(1 - q)`` and returns ``a * keep / (1 - q)``;
# the batched forward draws the same mask from the model's own stream.
NOISE_RATES = {"dropout": lambda handler, tap: float(handler.rate(tap))}
# Optimizer overrides the stacked optimizers apply per model.
OPTIMIZER_OVERRIDES = {"weight_decay"}
# Parameter-free, elementwise layers the bmm backend applies to stacked activations.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU,
               nn.Identity, nn.Softplus)


class NotBatchable(Exception):
    """The group cannot be trained as one stacked computation (the reason says why)."""


# -- grouping (config only, nothing built) ------------------------------------------
def stackable(reg: Regularizer) -> bool:
    """Whether the engine reproduces this regularizer: off, a forward-noise rate it knows
    (dropout), or only optimizer overrides it applies per model (weight decay)."""
    if not reg.active():
        return True
    if set(reg.optimizer_overrides()) - OPTIMIZER_OVERRIDES:
        return False
    return reg.name in NOISE_RATES or type(reg).bind is Regularizer.bind

def group_key(spec: Any, registry: Registry) -> str | None:
    """Specs with equal keys can be stacked; ``None`` means train this one alone.

    Same dataset, same architecture (model params after the regularizers' model
    overrides), same batch size and optimizer type; regularizers only of kinds the
    engine reproduces; no per-epoch callbacks (volume tracking).
    """
    recipe: TrainRecipe = spec.recipe
    if recipe.track_volume is not None:
        return None
    model_params = dict(spec.config["model"]["params"])
    for name, raw in spec.config["regularizers"].items():
        cls = registry.get("regularizer", name).cls
        reg = cls(cls.Params(**raw))
        if not stackable(reg):
            return None
        model_params.update(reg.model_overrides() if reg.active() else {})
    return canonical_json({"dataset": spec.config["dataset"],
                           "model": [spec.config["model"]["name"], model_params],
                           "batch_size": recipe.batch_size, "optimizer": recipe.optimizer})


def why_not_batchable(spec: Any, registry: Registry) -> str:
    """One line for the debug log."""
    if spec.recipe.track_volume is not None:
        return "volume tracking during training runs per model"
    return f"regularizers {sorted(spec.config['regularizers'])} include one the engine cannot stack"


# -- stacked optimizers -------------------------------------------------------------
def _per_model(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(N,) values as a tensor broadcasting against a stacked (N, ...) parameter."""
    t = torch.tensor(list(values), dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1)))


class StackedSGD:
    """torch.optim.SGD (momentum, weight decay, no dampening/nesterov) with per-model
    hyperparameters over stacked parameters."""

    def __init__(self, params: list[torch.Tensor], momentum: list[float], weight_decay: list[float]):
        self.momentum = [_per_model(momentum, p) for p in params]
        self.wd = [_per_model(weight_decay, p) for p in params]
        self.any_wd = any(weight_decay)
        self.any_momentum = any(momentum)
        self.buf: list[torch.Tensor] | None = None
        self.lr: list[torch.Tensor] = []

    def set_lr(self, lrs: list[float], params: list[torch.Tensor]) -> None:
        self.lr = [_per_model(lrs, p) for p in params]

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.any_wd:
                g = g + self.wd[i] * p
            if self.any_momentum:
                if self.buf is None or self.buf[i] is None:
                    if self.buf is None:
                        self.buf = [None] * len(params)  # type: ignore[list-item]
                    self.buf[i] = g.clone()
                else:
                    self.buf[i].mul_(self.momentum[i]).add_(g)
                g = self.buf[i]
            p.sub_(self.lr[i] * g)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the models at ``keep`` (indices into the current stack)."""
        self.momentum = [m[keep.to(m.device)] for m in self.momentum]
        self.wd = [w[keep.to(w.device)] for w in self.wd]
        if self.buf is not None:
            self.buf = [b[keep.to(b.device)] for b in self.buf]


class StackedAdam:
    """torch.optim.Adam (defaults: betas (0.9, 0.999), eps 1e-8, L2 weight decay) with
    per-model lr and weight decay over stacked parameters."""

    def __init__(self, params: list[torch.Tensor], weight_decay: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.wd = [_per_model(weight_decay, p) for p in params]
        self.any_wd = any(weight_decay)
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0
        self.lr: list[torch.Tensor] = []

    def set_lr(self, lrs: list[float], params: list[torch.Tensor]) -> None:
        self.lr = [_per_model(lrs, p) for p in params]

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        bc1 = 1 - self.beta1 ** self.steps
        bc2_sqrt = math.sqrt(1 - self.beta2 ** self.steps)
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.any_wd:
                g = g + self.wd[i] * p
            self.exp_avg[i].lerp_(g, 1 - self.beta1)
            self.exp_avg_sq[i].mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (self.exp_avg_sq[i].sqrt() / bc2_sqrt).add_(self.eps)
            p.sub_((self.lr[i] / bc1) * self.exp_avg[i] / denom)

    def select(self, keep: torch.Tensor) -> None:
        self.wd = [w[keep.to(w.device)] for w in self.wd]
        self.exp_avg = [m[keep.to(m.device)] for m in self.exp_avg]
        self.exp_avg_sq = [v[keep.to(v.device)] for v in self.exp_avg_sq]


# -- stacked forward passes ---------------------------------------------------------
Noise = dict[int, tuple[torch.Tensor, torch.Tensor]]  # tap -> (keep mask (N,B,..), 1-q (N,1,..))


class BmmBackend:
    """Hand-batched MLP: each Linear is one ``baddbmm`` over the stack.

    Applies to an ``nn.Sequential`` of Flatten, Linear, Tap (around an elementwise
    activation) and bare elementwise layers, which is what the ``mlp`` family builds.
    """

    name = "bmm"

    def __init__(self, model: nn.Module, names: list[str]):
        if not isinstance(model, nn.Sequential):
            raise NotBatchable("bmm backend: the model is not an nn.Sequential")
        position = {n: i for i, n in enumerate(names)}
        self.ops: list[tuple[str, Any]] = []
        self.transposed: set[int] = set()  # Linear weights kept as (N, in, out): ~15% faster bmm
        for child_name, child in model.named_children():
            if isinstance(child, nn.Flatten) and child.start_dim == 1 and child.end_dim == -1:
                self.ops.append(("flatten", None))
            elif isinstance(child, nn.Linear):
                self.ops.append(("linear", (position[f"{child_name}.weight"],
                                            position.get(f"{child_name}.bias"))))
                self.transposed.add(position[f"{child_name}.weight"])
            elif isinstance(child, taps.Tap) and isinstance(child.activation, ELEMENTWISE):
                self.ops.append(("tap", (child.index, child.activation)))
            elif isinstance(child, ELEMENTWISE):
                self.ops.append(("act", child))
            else:
                raise NotBatchable(f"bmm backend: layer {type(child).__name__} is not stackable")

    def stack(self, index: int, stacked: torch.Tensor) -> torch.Tensor:
        """The stacked parameter ``index`` (N, *shape) in the layout forward() uses."""
        return stacked.transpose(1, 2).contiguous() if index in self.transposed else stacked

    def unstack(self, index: int, one: torch.Tensor) -> torch.Tensor:
        """One model's slice back in its module's layout."""
        return one.t() if index in self.transposed else one

    def forward(self, params: list[torch.Tensor], x: torch.Tensor, noise: Noise | None,
                stacked: bool) -> torch.Tensor:
        """Logits (N, B, C) from inputs x: (N, B, ...) if ``stacked``, else (B, ...) shared
        by every model (evaluation). ``noise`` is None in evaluation."""
        h = x
        for kind, arg in self.ops:
            if kind == "linear":
                w = params[arg[0]]  # (N, in, out)
                b = None if arg[1] is None else params[arg[1]].unsqueeze(1)
                if not stacked:  # (B, in) @ (N, in, out) broadcasts to (N, B, out)
                    h = torch.matmul(h, w) if b is None else torch.matmul(h, w) + b
                    stacked = True
                else:
                    h = torch.bmm(h, w) if b is None else torch.baddbmm(b, h, w)
            elif kind == "flatten":
                h = h.flatten(2 if stacked else 1)
            elif kind == "tap":
                index, act = arg
                h = act(h)
                if noise is not None and index in noise:
                    keep, div = noise[index]
                    h = h * keep / div
            else:
                h = arg(h)
        return h


class _MaskInjector(taps.TapHandler):
    """Stands in for the dropout handler inside vmap: applies masks drawn outside it."""

    def __init__(self) -> None:
        self.current: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def activation(self, tap: taps.Tap, a: torch.Tensor) -> torch.Tensor:
        if tap.index not in self.current:
            return a
        keep, div = self.current[tap.index]
        return a * keep / div


class VmapBackend:
    """torch.func: ``functional_call`` of one model under ``vmap`` over the stacked weights.

    Works for any buffer-free model whose forward pass has no randomness of its own
    (the taps' dropout masks are drawn outside and passed in).
    """

    name = "vmap"

    def __init__(self, model: nn.Module, names: list[str]):
        import copy

        if any(True for _ in model.buffers()):
            raise NotBatchable("vmap backend: the model has buffers (e.g. BatchNorm)")
        self.base = copy.deepcopy(model)
        self.injector = _MaskInjector()
        for tap in taps.taps(self.base):
            tap.handlers = [self.injector]
        self.names = names

    def stack(self, index: int, stacked: torch.Tensor) -> torch.Tensor:
        return stacked

    def unstack(self, index: int, one: torch.Tensor) -> torch.Tensor:
        return one

    def forward(self, params: list[torch.Tensor], x: torch.Tensor, noise: Noise | None,
                stacked: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        tap_ids = sorted(noise or {})
        extra = [t for i in tap_ids for t in noise[i]]  # type: ignore[index]

        def one(ps: tuple[torch.Tensor, ...], xi: torch.Tensor, *nz: torch.Tensor) -> torch.Tensor:
            self.injector.current = {i: (nz[2 * k], nz[2 * k + 1]) for k, i in enumerate(tap_ids)}
            return functional_call(self.base, dict(zip(self.names, ps)), (xi,))

        self.base.train(noise is not None)
        try:
            return vmap(one, in_dims=(0, 0 if stacked else None, *([0] * len(extra))))(
                tuple(params), x, *extra)
        finally:
            self.injector.current = {}


BACKENDS = {"bmm": BmmBackend, "vmap": VmapBackend}


def choose_backend(model: nn.Module, names: list[str], backend: str = "auto") -> Any:
    """``auto``: bmm where the model is a plain MLP (measured faster), else vmap."""
    if backend != "auto":
        return BACKENDS[backend](model, names)
    try:
        return BmmBackend(model, names)
    except NotBatchable:
        return VmapBackend(model, names)


# -- one model of the stack ---------------------------------------------------------
@dataclass
class Member:
    """What one model of the group keeps for itself."""

    spec: Any
    recipe: TrainRecipe
    model: nn.Module
    init_state: dict[str, torch.Tensor]
    noise: torch.Generator  # dropout masks: the stream train_one's global RNG would give
    order: torch.Generator  # data order (and augmentation)
    rates: list[float]  # drop rate per tap (0: no noise)
    weight_decay: float
    history: list[dict[str, Any]]


def build_member(spec: Any, data: DataBundle, registry: Registry, device: torch.device) -> Member:
    """Build the model exactly as train_one does and capture its RNG streams."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(spec.seed)
        built = build_model(registry, spec.config, data)
        model = built.model.to(device)
        init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if device.type == "cuda":
            noise = torch.Generator(device=device)
            noise.set_state(torch.cuda.get_rng_state(device))
        else:
            noise = torch.Generator()
            noise.set_state(torch.get_rng_state())
    recipe = spec.recipe
    if recipe.track_volume is not None:
        raise NotBatchable("volume tracking during training runs per model")
    extra = set(built.optimizer_overrides) - OPTIMIZER_OVERRIDES
    if extra:
        raise NotBatchable(f"optimizer overrides {sorted(extra)} are not stackable")
    noisy = [r for r in built.regularizers if r.name in NOISE_RATES and r.active()]
    other = [r.name for r in built.regularizers if not stackable(r)]
    if other or len(noisy) > 1:
        raise NotBatchable(f"regularizers {other or [r.name for r in noisy]} cannot be stacked")
    rates = []
    for tap in taps.taps(model):
        if not tap.handlers:
            rates.append(0.0)
            continue
        handler = tap.handlers[0]
        kind = type(handler)
        if (len(tap.handlers) != 1 or not noisy
                or kind.preactivation is not taps.TapHandler.preactivation
                or kind.after_step is not taps.TapHandler.after_step):
            raise NotBatchable(f"tap {tap.index}: handlers {tap.handlers} cannot be stacked")
        rates.append(NOISE_RATES[noisy[0].name](handler, tap))
    wd = built.optimizer_overrides.get("weight_decay", recipe.weight_decay)
    return Member(spec, recipe, model, init_state, noise,
                  torch.Generator().manual_seed(spec.seed + 7919), rates, float(wd), [])


def _tap_shapes(model: nn.Module, x: torch.Tensor) -> dict[int, tuple[int, ...]]:
    """Per-sample output shape of every tap (a one-sample probe in eval mode)."""
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [t.register_forward_hook(
        lambda mod, inp, out: shapes.__setitem__(mod.index, tuple(out.shape[1:])))
        for t in taps.taps(model)]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x[:1])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return shapes


# -- the stacked training loop ------------------------------------------------------
def stacked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (N, B) of logits (N, B, C).

    Computed class-major, (N, C, B): PyTorch's CPU log-softmax over a short last
    dimension (10 classes) is ~5x slower than over the middle one (measured 3.3 ms
    vs 0.66 ms forward+backward for 72 x 64 samples).
    """
    return F.cross_entropy(logits.transpose(1, 2).contiguous(), y, reduction="none")


class GroupTrainer:
    """Trains one group of specs as a stack; see the module docstring for what each keeps."""

    def __init__(self, specs: list[Any], data: DataBundle, registry: Registry,
                 device: str | torch.device = "cpu", backend: str = "auto"):
        if not specs:
            raise NotBatchable("empty group")
        self.t0 = time.perf_counter()
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.members = [build_member(s, self.data, registry, self.device) for s in specs]
        first = self.members[0]
        self.names = [n for n, _ in first.model.named_parameters()]
        shapes = [tuple(p.shape) for _, p in first.model.named_parameters()]
        for m in self.members:
            if ([n for n, _ in m.model.named_parameters()] != self.names
                    or [tuple(p.shape) for _, p in m.model.named_parameters()] != shapes):
                raise NotBatchable("the group's models differ in architecture")
            if set(m.model.state_dict()) != set(self.names):
                raise NotBatchable("the models have buffers (e.g. BatchNorm statistics)")
            if (m.recipe.batch_size, m.recipe.optimizer) != (first.recipe.batch_size,
                                                             first.recipe.optimizer):
                raise NotBatchable("the group mixes batch sizes or optimizer types")
        self.backend = choose_backend(first.model, self.names, backend)
        shapes_at = _tap_shapes(first.model, self.data.train_x)
        self.noisy_taps = {i: shapes_at[i] for i in sorted(shapes_at)
                           if any(m.rates[i] > 0 for m in self.members)}
        from torch.func import stack_module_state

        stacked, _ = stack_module_state([m.model for m in self.members])
        self.params = [self.backend.stack(i, stacked[n].detach()).clone().requires_grad_()
                       for i, n in enumerate(self.names)]
        recipes = [m.recipe for m in self.members]
        wds = [m.weight_decay for m in self.members]
        if first.recipe.optimizer == "adam":
            self.opt: Any = StackedAdam(self.params, wds)
        else:
            self.opt = StackedSGD(self.params, [r.momentum for r in recipes], wds)

    # -- pieces ---------------------------------------------------------------------
    def noise_plan(self, active: list[int]) -> list[tuple[Any, ...]]:
        """Per noisy tap: (tap, per-sample shape, [(row, rate, stream)] of the models that
        draw, 1 - rate per row as a broadcastable tensor); fixed while the stack is."""
        plan = []
        dtype = self.params[0].dtype
        for index, shape in self.noisy_taps.items():
            rates = [self.members[j].rates[index] for j in active]
            if not any(rates):
                continue
            drawers = [(k, q, self.members[j].noise) for k, (j, q) in enumerate(zip(active, rates))
                       if q > 0]
            div = torch.tensor([1.0 - q for q in rates], dtype=dtype, device=self.device)
            plan.append((index, shape, drawers, div.view(-1, *([1] * (len(shape) + 1)))))
        return plan

    def draw_noise(self, plan: list, n_rows: int, batch: int) -> Noise | None:
        """Each model's masks from its own stream, in the sequential path's order
        (per model: tap 0 then tap 1 ...; streams are independent across models)."""
        if not plan:
            return None
        out: Noise = {}
        for index, shape, drawers, div in plan:
            keep = torch.ones((n_rows, batch, *shape), dtype=div.dtype, device=self.device)
            for k, q, stream in drawers:
                keep[k].bernoulli_(1.0 - q, generator=stream)
            out[index] = (keep, div)
        return out

    @torch.no_grad()
    def evaluate(self) -> tuple[list[float], list[float]]:
        """(mean loss, accuracy) on the training set per stacked model, in eval mode."""
        x, y = self.data.train_x, self.data.train_y
        n_models = self.params[0].shape[0]
        chunk = max(1, min(4096, EVAL_ROWS // max(1, n_models)))
        total = torch.zeros(n_models, dtype=torch.float64, device=self.device)
        correct = torch.zeros(n_models, dtype=torch.long, device=self.device)
        for i in range(0, x.shape[0], chunk):
            out = self.backend.forward(self.params, x[i:i + chunk], None, stacked=False)
            yy = y[i:i + chunk]
            targets = yy.expand(n_models, -1).contiguous()
            total += stacked_cross_entropy(out, targets).sum(1).double()
            correct += (out.argmax(2) == yy).sum(1)
        n = x.shape[0]
        return (total / n).tolist(), (correct.double() / n).tolist()

    def finish(self, j: int, k: int, epoch: int) -> TrainResult:
        """Model ``j`` (row ``k`` of the stack) stops: metrics exactly as train_one."""
        m = self.members[j]
        with torch.no_grad():
            own = dict(m.model.named_parameters())
            for i, (name, p) in enumerate(zip(self.names, self.params)):
                own[name].copy_(self.backend.unstack(i, p[k]))
        metrics = {**final_metrics(m.model, self.data, epoch, m.history), "engine": "batched"}
        final_state = {key: v.detach().clone() for key, v in m.model.state_dict().items()}
        seconds = (time.perf_counter() - self.t0) / len(self.members)
        return TrainResult(m.init_state, final_state, metrics, seconds)

    def run(self) -> list[TrainResult | BaseException]:
        data, members, dev = self.data, self.members, self.device
        n, batch = data.n_train, members[0].recipe.batch_size
        results: list[TrainResult | BaseException | None] = [None] * len(members)
        active = list(range(len(members)))
        for epoch in range(1, max(m.recipe.max_epochs for m in members) + 1):
            lrs = [lr_at(members[j].recipe, epoch - 1) for j in active]
            self.opt.set_lr(lrs, self.params)
            perms = torch.stack([torch.randperm(n, generator=members[j].order)
                                 for j in active]).to(dev)
            plan = self.noise_plan(active)
            bad = torch.zeros(len(active), dtype=torch.bool, device=dev)
            first_bad = torch.zeros(len(active), device=dev)
            for i in range(0, n, batch):
                idx = perms[:, i:i + batch]
                x = data.train_x[idx]
                if data.augment is not None:
                    x = torch.stack([data.augment(x[k], members[j].order)
                                     for k, j in enumerate(active)])
                y = data.train_y[idx]
                noise = self.draw_noise(plan, len(active), idx.shape[1])
                logits = self.backend.forward(self.params, x, noise, stacked=True)
                losses = stacked_cross_entropy(logits, y).mean(1)
                # train_one stops a model at its first non-finite loss; find it without a sync.
                now_bad = ~torch.isfinite(losses.detach())
                first_bad = torch.where(now_bad & ~bad, losses.detach(), first_bad)
                bad |= now_bad
                grads = torch.autograd.grad(losses.sum(), self.params)
                self.opt.step(self.params, grads)
            losses_now, accs = self.evaluate()
            done = []
            for k, (j, is_bad, bad_value) in enumerate(zip(active, bad.tolist(),
                                                          first_bad.tolist())):
                m = members[j]
                if is_bad:
                    results[j] = FloatingPointError(
                        f"training loss became {bad_value} at epoch {epoch}")
                    done.append(k)
                    continue
                m.history.append({"epoch": epoch, "lr": lrs[k], "train_loss": losses_now[k],
                                  "train_acc": accs[k]})
                if stop_reached(m.recipe, losses_now[k], accs[k]) or epoch >= m.recipe.max_epochs:
                    results[j] = self.finish(j, k, epoch)
                    done.append(k)
            if done:
                stay = [k for k in range(len(active)) if k not in done]
                if not stay:
                    break
                keep = torch.tensor(stay, device=dev)
                self.params = [p.detach()[keep].requires_grad_() for p in self.params]
                self.opt.select(keep)
                active = [active[k] for k in stay]
        return results  # type: ignore[return-value]


def train_batched(specs: list[Any], data: DataBundle, registry: Registry,
                  device: str | torch.device = "cpu", backend: str = "auto",
                  ) -> list[TrainResult | BaseException]:
    """Train ``specs`` as one stack; one TrainResult (or the model's exception) per spec.

    Raises :class:`NotBatchable` before any training if the group cannot be stacked.
    """
    return GroupTrainer(specs, data, registry, device, backend).run()

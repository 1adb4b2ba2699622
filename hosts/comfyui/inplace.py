"""Our LoRAs written in place into the weights ComfyUI holds, kept in step with the clone ComfyUI loads.

ComfyUI patches a LoRA by keeping a backup of each weight and swapping a new Parameter in. We write
into the weights' own storage instead (`lora_merge`'s patcher: same Parameter objects, same
`data_ptr()`, a sparse restore state of a few % instead of a backup, bitwise-exact restore), so a
strength change re-weights in place and a compiled or captured UNet stays valid.

The weights of one checkpoint are shared by all its ModelPatcher clones; which LoRA mix they carry
is the state of the shared BaseModel. One `InPlaceController` per BaseModel (attribute
`lcm_accel_inplace`) keeps that state and follows ComfyUI's model management through its documented
extension points only:
- an object patch `lcm_accel_inplace.wanted` on our clones: ComfyUI sets it when it patches one of
  our clones and puts the previous value back whenever ANY clone of the model unpatches, so the
  controller hears of every clone switch (a clone without our LoRAs included);
- an injection on our clones: `inject` runs once ComfyUI has finished patching its own weights for
  our clone (end of `patch_model` / `partially_load`): there the weights are brought to our clone's
  mix, re-weighted in place where only strengths changed. Ours therefore sits on top of ComfyUI's
  own LoRA patches, and ComfyUI's backups never contain our delta;
- a state_dict pre-hook on every patched layer: ComfyUI reads each layer's state dict when it plans
  a load (`module_size` in `_load_list`) before it patches a weight, and so does anything that saves
  or copies the weights. If the clone being loaded is not ours (or sits on other ComfyUI patches),
  our patch is taken out there first;
- ON_DETACH with unpatch_all (model unloaded): restored at once;
- each of our clones gets a patches_uuid derived from its parent's: clones that differ only in our
  strengths share it (ComfyUI keeps its weights loaded, we re-weight), while the parent and other
  clones differ (ComfyUI re-plans its load, and the hook above fires).
A weight ComfyUI replaced meanwhile (its own restore swaps a new Parameter in) is detected by
identity and its state dropped, never "restored" twice; a weight ComfyUI moved to another device is
restored by recomputing the delta on the device it was applied on (same bits).
"""

from __future__ import annotations

import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...lora_merge import LoraFile, LoraPatchError, LowRankPatch, PatchBuilder, TargetIndex, part_on, plan_targets
from ...lora_merge.patcher import SUPPORTED_DTYPES, patch_weight, reweight_weight, unpatch_weight
from ...runtime.lora_files import merge_duplicate_files
from .unpatched import unpatched_parameters

KEY = "lcm_accel_inplace"
WANTED = f"{KEY}.wanted"  # the object-patch path: set_attr(base_model, WANTED, value)
PREFIX = "diffusion_model."
_UUID_NAMESPACE = uuid.UUID("4f5c3b52-9c1e-4d7e-9a55-3c0a6e2b8d11")


@dataclass(frozen=True, eq=False)
class AdapterGroup:
    """The adapters one of our nodes added, with their strengths and the node's SVD rank."""

    files: tuple[LoraFile, ...]
    weights: tuple[float, ...]
    rank: int | None


@dataclass(eq=False)
class InPlaceSpec:
    """Everything our nodes added to one clone: groups in node order and, per diffusion-model
    parameter, the plan parts (LoRA factors, LyCORIS modules, bias parts) of every (group, adapter)
    that patches it."""

    groups: tuple[AdapterGroup, ...]
    targets: dict[str, list[tuple[int, int, object]]]  # param name -> [(group, adapter, part)]
    _moved: dict = field(default_factory=dict, repr=False)

    def patch_for(self, name: str, param: torch.Tensor, fresh: bool = False) -> LowRankPatch:
        """The weight's ONE patch (`lora_merge.PatchBuilder`: low-rank parts concatenated, LyCORIS
        deltas summed per layer, DoRA as ComfyUI computes it). Groups without a rank build as one; a
        group with its own SVD rank is built apart and the groups' deltas are summed per layer.
        `fresh`: the weight carries no patch now (DoRA takes its norm from it)."""
        per_group: dict[int, list] = {}
        for g, a, part in self.targets[name]:
            per_group.setdefault(g, []).append((part_on(part, param.device, self._moved), self.groups[g].weights[a]))
        if all(self.groups[g].rank is None for g in per_group):
            parts = [p for g in sorted(per_group) for p in per_group[g]]
            return _builder(self.groups, None, sorted(per_group), param.device).build(name, param, parts, fresh)
        patches = [
            _builder(self.groups, self.groups[g].rank, [g], param.device).build(name, param, per_group[g], fresh)
            for g in sorted(per_group)
        ]
        if any(p.coef is not None for p in patches):
            raise LoraPatchError(f"'{name}': a DoRA layer cannot be mixed with another LCM Accel node's LoRAs")
        return _summed(patches, tuple(param.shape))


_BUILDERS: OrderedDict = OrderedDict()  # (file ids, rank) -> (files kept alive, PatchBuilder)


def _builder(groups: Sequence[AdapterGroup], rank: int | None, which: Sequence[int], device) -> PatchBuilder:
    """One PatchBuilder per set of files, rank and device, shared by every clone with those files: a clone
    that differs only in strengths re-weights with each adapter's product computed once per chunk."""
    files = tuple(f for g in which for f in groups[g].files)
    key = (tuple(id(f) for f in files), rank, str(device))
    if key not in _BUILDERS:
        _BUILDERS[key] = (files, PatchBuilder(rank))
        while len(_BUILDERS) > 16:
            _BUILDERS.popitem(last=False)
    _BUILDERS.move_to_end(key)
    return _BUILDERS[key][1]


def _summed(patches: list[LowRankPatch], shape: tuple[int, ...]) -> LowRankPatch:
    """Several groups' patches of one weight as one: their deltas summed, one layer at a time."""
    first = patches[0]
    up, down = first.up[:, :0], first.down[:0]

    def dense() -> torch.Tensor:
        total = None
        for p in patches:
            d = p.delta().reshape(shape[0], -1).to(up.dtype)
            total = d if total is None else total.add_(d)
        return total

    return LowRankPatch(up.contiguous(), down.contiguous(), shape, max(p.relative_error for p in patches), dense)


class Wanted:
    """The object-patch value one clone carries: its spec, and (weakly) the clone itself."""

    def __init__(self, spec: InPlaceSpec, patcher):
        self.spec = spec
        self.patcher = weakref.ref(patcher)


@dataclass
class _Applied:
    """One patched weight: the Parameter written into, where, with what, and its restore state."""

    param: torch.nn.Parameter
    device: torch.device
    spec: InPlaceSpec
    state: object


class InPlaceController:
    """Which of our mixes the shared diffusion model carries, and the moves that change it."""

    def __init__(self, base_model):
        self._base = weakref.ref(base_model)
        self._wanted: Wanted | None = None
        self.pending = False  # a clone switch happened that the weights have not followed yet
        self.applied: dict[str, _Applied] = {}
        self.applied_uuid = None
        self.applied_patcher = None  # strong: ComfyUI's LoadedModel keeps pointing at it, callbacks fire
        self._hooked: set[int] = set()

    # ------------------------------------------------------------- ComfyUI's object patch
    @property
    def wanted(self) -> Wanted | None:
        return self._wanted

    @wanted.setter
    def wanted(self, value: Wanted | None) -> None:
        """ComfyUI sets it when it patches one of our clones, resets it when any clone unpatches."""
        self._wanted = value
        if self.applied:
            self.pending = True

    # ------------------------------------------------------------- the moves
    def sync(self, patcher) -> None:
        """Bring the weights to `patcher`'s mix (ComfyUI's own patches already in place)."""
        wanted = patcher.object_patches.get(WANTED)
        spec = wanted.spec if isinstance(wanted, Wanted) else None
        if spec is None:
            self.restore_all()
            return
        if self.applied and self.applied_uuid != patcher.patches_uuid:
            self.restore_all()  # other ComfyUI patches below: ours came off before ComfyUI re-patched
        self._drop_stale()
        todo = [n for n in self.applied if n not in spec.targets]
        todo += [n for n in spec.targets if n not in self.applied or self.applied[n].spec is not spec]
        if todo:
            progress = _progress(len(todo))
            for n, name in enumerate(todo):
                _check_interrupt()
                self._set_one(name, spec if name in spec.targets else None)
                progress(n + 1)
        self.applied_uuid = patcher.patches_uuid
        self.applied_patcher = patcher if self.applied else None
        self._hook_layers(spec)
        self.pending = False

    def restore_all(self) -> None:
        """Every weight back to its bits without our patch (stale states are dropped)."""
        self._drop_stale()
        names = list(self.applied)
        progress = _progress(len(names)) if names else None
        for n, name in enumerate(reversed(names)):
            self._set_one(name, None)
            progress(n + 1)
        self.applied_uuid, self.applied_patcher, self.pending = None, None, False

    def before_host_reads(self) -> None:
        """ComfyUI (or anyone) is about to read the weights: after a switch to a clone that is not
        ours, or that sits on different ComfyUI patches, take our patch out first."""
        if not self.pending or not self.applied:
            return
        wanted = self._wanted
        loader = wanted.patcher() if wanted is not None else None
        if loader is None or loader.patches_uuid != self.applied_uuid:
            self.restore_all()

    # ------------------------------------------------------------- one weight
    def _current(self, name: str):
        base = self._base()
        obj = base.diffusion_model if base is not None else None
        for part in name.split("."):
            obj = getattr(obj, part, None)
        return obj if isinstance(obj, torch.nn.Parameter) else None

    def _drop_stale(self) -> None:
        """A weight whose Parameter ComfyUI replaced (its restore / load swapped a new one in) no
        longer carries our patch: forget it."""
        for name in [n for n, a in self.applied.items() if self._current(n) is not a.param]:
            del self.applied[name]

    def _set_one(self, name: str, spec: InPlaceSpec | None) -> None:
        """Weight `name` from whatever it carries now to `spec`'s mix (None: no patch). Atomic."""
        old = self.applied.get(name)
        param = old.param if old is not None else self._current(name)
        if param is None:
            raise LoraPatchError(f"LCM Accel: the diffusion model has no weight '{name}' to patch in place")
        if old is not None and spec is not None and param.device == old.device and old.state.patch.coef is None:
            new = spec.patch_for(name, param.data)  # one fused pass: restore and re-patch per chunk
            if new.coef is None:
                self.applied[name] = _Applied(
                    param, old.device, spec, reweight_weight(param.data, old.state, new, name)
                )
                return
        if old is not None:
            _unpatch_on(param, old)
            del self.applied[name]
        if spec is None:
            return
        try:
            state = patch_weight(param.data, spec.patch_for(name, param.data, fresh=True))
        except BaseException:
            if old is not None:  # put the previous mix back: the weight is never left half-done
                _repatch_on(param, old)
                self.applied[name] = old
            raise
        self.applied[name] = _Applied(param, param.device, spec, state)

    def _hook_layers(self, spec: InPlaceSpec) -> None:
        base = self._base()
        if base is None:
            return
        for name in spec.targets:
            layer = base.diffusion_model.get_submodule(name.rsplit(".", 1)[0])
            if id(layer) not in self._hooked:
                self._hooked.add(id(layer))
                layer.register_state_dict_pre_hook(_make_read_hook(self))


def _make_read_hook(controller: InPlaceController):
    ref = weakref.ref(controller)

    def hook(module, prefix, keep_vars):
        c = ref()
        if c is not None:
            c.before_host_reads()

    return hook


def _on_applied_device(param: torch.nn.Parameter, applied: _Applied, fn) -> None:
    """Run `fn(weight)` where the patch was applied: the delta is recomputed with the same bits only on
    that device, so a weight ComfyUI moved meanwhile is worked on as a copy there and copied back."""
    if param.device == applied.device:
        fn(param.data)
        return
    work = param.data.to(applied.device)
    fn(work)
    param.data.copy_(work)


def _unpatch_on(param: torch.nn.Parameter, applied: _Applied) -> None:
    _on_applied_device(param, applied, lambda w: unpatch_weight(w, applied.state))


def _repatch_on(param: torch.nn.Parameter, applied: _Applied) -> None:
    """Re-apply a weight's previous patch after a failed change (same patch: same bits)."""

    def repatch(w: torch.Tensor) -> None:
        applied.state = patch_weight(w, applied.state.patch)

    _on_applied_device(param, applied, repatch)


def _progress(total: int):
    """ComfyUI's progress bar (the UI shows it) for `total` weights."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)
    return lambda done: bar.update_absolute(done, total)


def _check_interrupt() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def controller_of(base_model) -> InPlaceController:
    """The BaseModel's controller, created on first use."""
    controller = getattr(base_model, KEY, None)
    if controller is None:
        controller = InPlaceController(base_model)
        setattr(base_model, KEY, controller)
    return controller


# ------------------------------------------------------------------ the clone's side
def _inject(patcher) -> None:
    controller_of(patcher.model).sync(patcher)


def _eject(patcher) -> None:
    """Lazy: the weights keep our mix until a clone that wants another one is loaded (or the model is
    unloaded), so loading the same clone again, or a clone with other strengths, costs nothing / a
    re-weight."""


def _on_clone(parent, child) -> None:
    """Every clone carries its own object-patch value, pointing back at itself."""
    wanted = child.object_patches.get(WANTED)
    if isinstance(wanted, Wanted):
        child.object_patches[WANTED] = Wanted(wanted.spec, child)


def _on_detach(patcher, unpatch_all: bool) -> None:
    if unpatch_all:  # unloaded: ComfyUI's contract is that the weights are the checkpoint's again
        controller = getattr(patcher.model, KEY, None)
        if controller is not None and controller.applied_patcher is patcher:
            controller.restore_all()


def inplace_spec(model) -> InPlaceSpec | None:
    """The in-place mix a clone carries (None: none)."""
    wanted = model.object_patches.get(WANTED)
    return wanted.spec if isinstance(wanted, Wanted) else None


def inplace_problem(model, spec: InPlaceSpec) -> str | None:
    """Why this clone cannot carry `spec` in place (None: it can)."""
    import comfy.model_patcher

    if getattr(model, "weight_inplace_update", False):
        return "the model was loaded with weight_inplace_update (ComfyUI copies into the weights itself)"
    if model.hook_patches or model.current_hooks is not None or model.forced_hooks is not None:
        return "the model carries ComfyUI hook patches (keyframed LoRA hooks write into the weights)"
    params = unpatched_parameters(model)
    for name in spec.targets:
        tensor = params[name]
        if tensor.dtype not in SUPPORTED_DTYPES:
            return f"weight '{name}' is stored as {tensor.dtype} (in place needs fp16 / bf16 / fp32)"
        if tensor.device.type == "meta":
            return f"weight '{name}' is not materialised (meta device)"
        _, set_func, convert_func = comfy.model_patcher.get_key_weight(model.model, PREFIX + name)
        if set_func is not None or convert_func is not None:
            return f"weight '{name}' is stored in a custom format (its set/convert functions)"
    return None


def plan_adapters(model, adapters: Sequence[tuple[LoraFile, float]]):
    """(plan, files, weights): the adapters resolved onto `model`'s diffusion-model weights (a file given
    twice is one adapter with the summed weight), with every check of the in-place patcher (names,
    shapes, family, finite factors) and no weight touched. Both routes (in place, add_patches) use it."""
    params = unpatched_parameters(model)  # a quantized clone still loaded must not hide the float layers
    files, weights = merge_duplicate_files(adapters)
    plan, _ = plan_targets(
        TargetIndex(list(params)), params, list(zip(files, weights)), strict=True, check_dtypes=False
    )
    return plan, files, weights


def plan_inplace(model, adapters: Sequence[tuple[LoraFile, float]], rank: int | None) -> InPlaceSpec:
    """The clone's spec after adding `adapters` as one more group: all checks done, no weight touched."""
    plan, files, weights = plan_adapters(model, adapters)
    previous = inplace_spec(model)
    groups = (previous.groups if previous is not None else ()) + (AdapterGroup(files, weights, rank),)
    targets = {name: list(parts) for name, parts in previous.targets.items()} if previous is not None else {}
    g = len(groups) - 1
    for target in plan:
        parts = targets.setdefault(target.param_name, [])
        parts.extend((g, a, f) for a, f in target.parts)
        if len(parts) > 1 and any(getattr(f, "dora_scale", None) is not None for _, _, f in parts):
            raise LoraPatchError(
                f"'{target.param_name}': a DoRA LoRA must be alone on its layers (ComfyUI applies "
                "DoRA to the weight it finds); load it in its own LCM Accel node after a core "
                "LoraLoader, or alone"
            )
    return InPlaceSpec(groups, targets)


def add_inplace(model, spec: InPlaceSpec):
    """A clone of `model` that carries `spec` in place (the weights follow when ComfyUI loads it)."""
    import comfy.patcher_extension as ext

    controller_of(model.model)
    clone = model.clone()
    clone.object_patches[WANTED] = Wanted(spec, clone)
    clone.set_injections(KEY, [ext.PatcherInjection(inject=_inject, eject=_eject)])
    clone.remove_callbacks_with_key(ext.CallbacksMP.ON_CLONE, KEY)
    clone.add_callback_with_key(ext.CallbacksMP.ON_CLONE, KEY, _on_clone)
    clone.remove_callbacks_with_key(ext.CallbacksMP.ON_DETACH, KEY)
    clone.add_callback_with_key(ext.CallbacksMP.ON_DETACH, KEY, _on_detach)
    if inplace_spec(model) is None:  # clones differing only in our strengths share one uuid
        clone.patches_uuid = uuid.uuid5(_UUID_NAMESPACE, str(model.patches_uuid))
    return clone


def strip_inplace(model) -> None:
    """Remove our in-place machinery from a clone (its mix was merged elsewhere, e.g. quantized)."""
    import comfy.patcher_extension as ext

    model.object_patches.pop(WANTED, None)
    model.remove_injections(KEY)
    model.remove_callbacks_with_key(ext.CallbacksMP.ON_CLONE, KEY)
    model.remove_callbacks_with_key(ext.CallbacksMP.ON_DETACH, KEY)
    model.is_injected = False

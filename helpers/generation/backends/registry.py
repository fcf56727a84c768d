"""The one list of decoding backends, and the rule `method="auto"` follows to pick one."""

from __future__ import annotations

import warnings

from transformers import OPTForCausalLM

from ...errors import SettingsError
from ...opt.model_state import model_device
from ...serving.served_model import is_served
from ..settings import GenerationSettings
from .base import Backend
from .cpu_engine import has_unmerged_adapter, supported
from .hf import generate_steps, static_cache_steps
from .loops import cached_steps, engine_steps
from .served import served_steps, unsupported
from .tutorial import tutorial_steps

MODE_NAMES = {"greedy": "greedy decoding", "sample": "sampling", "beam": "beam search",
              "beam-sample": "beam sampling", "contrastive": "contrastive search"}
_NO_CONTRASTIVE = {"contrastive": "transformers 5 no longer ships it: it needs remote hub code; the cached loop "
                                  "implements it here"}


def _engine_cannot_run(model: OPTForCausalLM, batch: int) -> str | None:
    if supported(model, batch):
        return None
    if has_unmerged_adapter(model):
        return ("it reads the plain weights, and this model has a LoRA adapter applied beside them: load it with "
                "merge=True (load_model) to run it here")
    return "it runs one prompt of an fp32 or bf16 model on the CPU (in one piece; quantized only by int8-weights-cpu)"


def _on_the_cpu(model: OPTForCausalLM, batch: int) -> bool:
    return model_device(model).type == "cpu"


def _one_prompt_on_cuda(model: OPTForCausalLM, batch: int) -> bool:
    """Where a static cache pays off: one prompt of an unquantized model (bitsandbytes' layers don't compile)."""
    return model_device(model).type == "cuda" and batch == 1 and getattr(model, "hf_quantizer", None) is None


def _listed(items: list[str]) -> str:
    """'', 'a', 'a and b', 'a, b and c'."""
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _always(model: OPTForCausalLM, batch: int) -> bool:
    return True


# In the order `method="auto"` tries them: the first that runs the settings' mode on this model and batch,
# and whose `chosen_by_auto` holds, is used (the speed page of the docs says why each wins where it does).
BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (
    Backend("cpu-fast", "the lean CPU engine, numpy's BLAS on every core", frozenset({"greedy", "sample"}),
            engine_steps, carries_logprobs=True, cannot_run=_engine_cannot_run, chosen_by_auto=_on_the_cpu),
    Backend("static", "model.generate with a static cache, compiled on CUDA", frozenset({"greedy", "sample"}),
            static_cache_steps, chosen_by_auto=_one_prompt_on_cuda, why_not=_NO_CONTRASTIVE),
    Backend("cached", "the cached loop: prefill once, then one token a step",
            frozenset({"greedy", "sample", "contrastive"}), cached_steps, carries_logprobs=True, chosen_by_auto=_always),
    Backend("hf", "transformers' model.generate", frozenset({"greedy", "sample", "beam", "beam-sample"}),
            generate_steps, chosen_by_auto=_always, why_not=_NO_CONTRASTIVE),
    Backend("tutorial", "the 2022 tutorial's loop: the whole sequence re-run each step", frozenset({"greedy"}),
            tutorial_steps),
)}
# A model an OpenAI-compatible server (vLLM) runs: the only backend for it, and for nothing else. Kept out of
# BACKENDS, the backends that run a model object loaded here (the tests, `bench` and `--method` go through them).
SERVED = Backend("served", "a model vLLM's OpenAI server runs (load_model(URL)): one streamed request",
                 frozenset({"greedy", "sample"}), served_steps, carries_logprobs=True,
                 cannot_run=lambda model, batch: None if is_served(model) else "it runs a served model (a URL)",
                 why_not={"beam": "vLLM's server streams no beams and OpenAI's completions lost best_of",
                          "beam-sample": "vLLM's server streams no beams",
                          "contrastive": "vLLM has no contrastive search"})
ALIASES = {"seed": "tutorial"}  # the name the tutorial's loop had first: still accepted, with a DeprecationWarning


def method_names() -> tuple[str, ...]:
    """The methods to offer: 'auto' and every backend (`check_method` also takes the old names in ALIASES)."""
    return ("auto", *BACKENDS)


def check_method(method: str) -> str:
    """The backend name `method` stands for ('auto' stays 'auto'); an unknown name is a SettingsError."""
    name = ALIASES.get(method, method)
    if name != method:
        warnings.warn(f"method '{method}' is deprecated: it is called '{name}' now.", DeprecationWarning, stacklevel=2)
    if name not in (*method_names(), SERVED.name):
        raise SettingsError(f"Unknown method '{method}'. Use one of: {', '.join(method_names())}.")
    return name


def _served(name: str, model, settings: GenerationSettings) -> Backend:
    """A served model runs on its server, in the modes the server has; a local one never there."""
    if not is_served(model):
        raise SettingsError(f"method '{name}' runs a model served at a URL (load_model('http://host:port/v1')); "
                            "this one is loaded here: use method='auto'.")
    if name not in ("auto", SERVED.name):
        raise SettingsError(f"method '{name}' runs a model loaded here; {model!r} runs on its server: use "
                            "method='auto'.")
    mode, problems = settings.mode, unsupported(settings)
    if problems:
        raise SettingsError("A served model cannot do " + "; ".join(problems) + ".")
    if mode not in SERVED.modes:
        raise SettingsError(f"A served model cannot do {MODE_NAMES.get(mode, mode)} ({SERVED.why_not[mode]}): use "
                            "greedy decoding or sampling (num_beams=1, penalty_alpha=0), or load the model here.")
    return SERVED


def choose_backend(method: str, model: OPTForCausalLM, settings: GenerationSettings, batch: int) -> Backend:
    """The backend for this call: the one named, checked against what it can do, or auto's pick."""
    name, mode = check_method(method), settings.mode
    if is_served(model) or name == SERVED.name:
        return _served(name, model, settings)
    if name == "auto":
        chosen = next((b for b in BACKENDS.values() if b.chosen_by_auto and mode in b.modes
                       and b.cannot_run(model, batch) is None and b.chosen_by_auto(model, batch)), None)
        if chosen is None:
            raise SettingsError(f"No decoding method runs {MODE_NAMES.get(mode, mode)} on this model with {batch} "
                                "prompt(s) at once: change do_sample, num_beams or penalty_alpha.")
        return chosen
    backend = BACKENDS[name]
    if mode not in backend.modes:
        does = _listed([MODE_NAMES.get(m, m) for m in sorted(backend.modes, key=list(MODE_NAMES).index)])
        why = f" ({backend.why_not[mode]})" if mode in backend.why_not else ""
        others = [f"'{b.name}'" for b in BACKENDS.values() if mode in b.modes and b.cannot_run(model, batch) is None]
        instead = f" or one of {', '.join(others)}" if len(others) > 1 else "".join(f" or {o}" for o in others)
        greedy = ("; or greedy decoding (do_sample=False, num_beams=1, penalty_alpha=0)"
                  if backend.modes == {"greedy"} else "")
        raise SettingsError(f"method '{name}' ({backend.summary}) does {does} only, not "
                            f"{MODE_NAMES.get(mode, mode)}{why}: use method='auto'{instead}{greedy}.")
    reason = backend.cannot_run(model, batch)
    if reason is not None:
        raise SettingsError(f"method '{name}' cannot run this: {reason}; use method='auto' for anything else.")
    return backend

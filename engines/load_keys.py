"""Load keys: the name of what an engine host keeps loaded for a job, computed from the claim.

The supervisor's GPU ledger and the hosts must agree on what "the same model" means, before
any file is downloaded: the supervisor computes ``load_key`` from an offer to ask "is this
warm somewhere?", and the host tags the model it loads for that job with the same key. A key
changes exactly when the load would: the files read (by sha256, else URL), where they land on
disk and the load-time options; never the prompt, seed, steps or size of one job. Keys are a
short readable prefix and label (``llama:``, ``sdcpp:``, ``synthetic:``) plus a hash of every
part, so they stay short and still tell an operator what they name. Pure: this module is
imported by the supervisor, so it must never import an inference library or touch the disk.
"""

from __future__ import annotations

import hashlib
from typing import Final

from engines.llm_core import pick_gguf
from protocol.tasks import (
    ROLE_DIFFUSION_MODEL,
    ROLE_LORA,
    ROLE_MODEL,
    ROLE_TEXT_ENCODER,
    ROLE_TEXT_ENCODER_VISION,
    ROLE_VAE,
    ModelFile,
    ModelSource,
    Task,
)

AUTO_CONTEXT: Final = "auto"
_DIGEST_HEX: Final = 16  # 64 bits: no two models one worker sees collide
_LABEL_CHARS: Final = 48  # the readable part; the digest covers the whole of it
# The sd-cpp roles whose first file the load reads (engines.sdcpp_args.plan_load).
_SDCPP_SINGLE_ROLES: Final = (ROLE_VAE, ROLE_TEXT_ENCODER, ROLE_TEXT_ENCODER_VISION)
# Engine names as the host (CLI) and the studio (``modelSource.engine``) spell them.
_LLAMA_NAMES: Final = frozenset({"llama", "llama-cpp"})
_SDCPP_NAMES: Final = frozenset({"sdcpp", "sd-cpp"})
_SYNTHETIC_NAMES: Final = frozenset({"synthetic"})


def load_key(engine: str, model: str, source: ModelSource, task: Task) -> str:
    """The key of what a host of ``engine`` keeps loaded to run this job.

    ``engine`` is a host engine name (``llama``, ``sdcpp``, ``synthetic``) or the studio's
    spelling (``llama-cpp``, ``sd-cpp``). ``task`` is part of the signature for engines whose
    load depends on the task; none of today's does. An engine this module does not know gets
    a key over the model id and every file, so equal claims still share a key. Never raises.
    """
    del task  # no load of today's engines depends on the task
    if engine in _LLAMA_NAMES:
        return _llama_key(model, source)
    if engine in _SDCPP_NAMES:
        return _sdcpp_key(model, source)
    if engine in _SYNTHETIC_NAMES:
        return f"synthetic:{model}"
    parts = [model, *(_file_identity(f) for f in source.files)]
    return f"{engine}:{_label(model)}:{_digest(parts)}"


def _llama_key(model: str, source: ModelSource) -> str:
    """The .gguf the engine loads (``pick_gguf``) and the context size asked.

    A source without files names a model in ``<models_root>/llm`` by its stem or file name.
    The file name is part of the key because the file is stored under it (``llm/<name>``).
    """
    size = source.cli_defaults.context_size
    # A non-positive size counts as unset (engines.llm_core.effective_context).
    context = str(size) if size is not None and size > 0 else AUTO_CONTEXT
    if not source.files:
        label, parts = model, ["local", model]
    else:
        chosen = pick_gguf(source.files)
        if chosen is None:  # the job fails before any load; the key only has to be stable
            label, parts = model, ["no-gguf", model, *(_file_identity(f) for f in source.files)]
        else:
            label, parts = chosen.filename, ["file", chosen.filename, _file_identity(chosen)]
    return f"llama:{_label(label)}:ctx={context}:{_digest([*parts, context])}"


def _sdcpp_key(model: str, source: ModelSource) -> str:
    """The inputs of ``plan_load``: the first file of each role it reads, every LoRA file
    (the LoRA directory goes to the load), offload_to_cpu and zero_cond_t, and the model id,
    because sd-cpp keeps each model's files in a directory of its own (so two ids load two
    copies even of equal files)."""
    by_role: dict[str, ModelFile] = {}
    for f in source.files:
        by_role.setdefault(f.role, f)
    main_role = ROLE_DIFFUSION_MODEL if ROLE_DIFFUSION_MODEL in by_role else ROLE_MODEL
    parts = [f"id={model}"]
    for role in (main_role, *_SDCPP_SINGLE_ROLES):
        if role in by_role:
            chosen = by_role[role]
            parts.append(f"{role}={chosen.filename}|{_file_identity(chosen)}")
    loras = sorted(f"{f.filename}|{_file_identity(f)}" for f in source.files if f.role == ROLE_LORA)
    parts += [f"lora={lora}" for lora in loras]
    defaults = source.cli_defaults
    parts.append(f"offload_to_cpu={bool(defaults.offload_to_cpu)}")
    parts.append(f"zero_cond_t={bool(defaults.zero_cond_t)}")
    return f"sdcpp:{_label(model)}:{_digest(parts)}"


def _file_identity(f: ModelFile) -> str:
    """A file's content as the offer names it: its sha256 when given, else its URL."""
    return f"sha256={f.sha256.lower()}" if f.sha256 else f"url={f.url}"


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _digest(parts: list[str]) -> str:
    # NUL cannot occur in a model id, a file name or a URL: parts never run together.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:_DIGEST_HEX]

"""The llama engine: chat completions from GGUF models through llama-cpp-python (§9.5).

One job: fetch the offer's files (``engines.provision``, llama layout), pick the GGUF,
keep it loaded across jobs under the job's load key (up to ``max_warm_models`` models, the
least recently used evicted first; one is reloaded when its file changed on disk),
render the model's own chat template, refuse a prompt that leaves no room to answer,
then generate token by token with progress as the liveness signal, honouring stop
strings and cancellation. With a ``jsonSchema`` a grammar built from the schema constrains
sampling, and the answer is validated before it is returned: one that fails is generated
again once with another seed, then fails the job, so done always means valid. The rules
themselves live in ``engines.llm_core``, ``engines.chat_template`` and
``engines.schema_contract``, the token loop in ``engines.llama_generate``; this module
fetches, loads and keeps models and renders the prompt.

Every failure is an ``EngineError`` (retryable) except a non-llm task (``UnsupportedTask``),
a schema the grammar cannot enforce (``SchemaRefused``) and an answer that does not satisfy
it (``InvalidOutput``), none retryable. llama.cpp's own error lines are captured while a
model loads, so a corrupt or truncated file fails the job with llama.cpp's reason instead of
a bare "failed to load".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

import llama_cpp

from engines.base import Engine, JobContext, JsonResult
from engines.chat_template import merge_kwargs, render_chat
from engines.cpu_threads import engine_threads
from engines.errors import EngineError, UnsupportedTask
from engines.ggml_device import GgmlRegistry, compute_device, probe_device
from engines.gguf_meta import GgufFormatError, training_context
from engines.llama_generate import answer
from engines.llama_model import (
    FileIdentity,
    LoadedModel,
    capture_native_logs,
    free_model,
    load_errors,
    load_model,
)
from engines.llm_core import (
    chat_messages,
    completion_json,
    effective_context,
    pick_gguf,
    plan_budget,
    should_add_bos,
)
from engines.progress_throttle import PROGRESS_INTERVAL_S
from engines.provision import LLM_SUBDIR, ensure_model_files
from engines.schema_contract import SchemaContract
from engines.warm_models import WarmModels
from protocol.ipc import ComputeDevice, ResidentModel
from protocol.tasks import LlmTask, ModelSource, TaskKindName, task_kind

WILDCARD_MODEL: Final = "llama-cpp:*"


class LlamaEngine(Engine):
    name = "llama"

    def __init__(self, models_root: Path, threads: int | None = None) -> None:
        super().__init__()
        self.models_root = models_root
        self._llm_dir = models_root / LLM_SUBDIR
        self._warm: WarmModels[LoadedModel] = WarmModels(free_model)
        self.threads = threads if threads is not None else engine_threads()
        # Token reports are paced (the last always sent); 0 reports every token.
        self.progress_interval_s = PROGRESS_INTERVAL_S
        capture_native_logs()

    # --- Engine interface -----------------------------------------------------------------

    def advertised_models(self) -> dict[TaskKindName, list[str]]:
        return {"llm": [*self._local_models(), WILDCARD_MODEL]}

    def library_versions(self) -> dict[str, str]:
        return {"llama-cpp-python": llama_cpp.__version__}

    def run(self, ctx: JobContext) -> JsonResult:
        task = ctx.task
        if not isinstance(task, LlmTask):
            raise UnsupportedTask(self.name, task_kind(task))
        # Before any download or load: a schema the grammar cannot enforce fails at once.
        schema = task.json_schema
        contract = SchemaContract.of(schema) if schema is not None else None
        path = self._model_file(ctx)
        loaded = self._ensure_loaded(ctx, path)
        started = time.monotonic()
        tokens = self._prompt_tokens(loaded, task, ctx.model_source)
        budget = plan_budget(len(tokens), task.max_tokens, loaded.n_ctx)
        text, generated, finish = answer(
            ctx, loaded, task, tokens, budget, contract, self.progress_interval_s
        )
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return JsonResult(
            completion_json(
                ctx.model,
                text,
                len(tokens),
                generated,
                finish,
                elapsed_ms,
                structured=contract is not None,
            )
        )

    def resident(self) -> list[ResidentModel]:
        return self._warm.resident()

    def unload(self, load_key: str) -> bool:
        return self._warm.discard(load_key)

    def compute_device(self) -> ComputeDevice:
        if not llama_cpp.llama_supports_gpu_offload():
            return ComputeDevice("cpu")
        return compute_device(GgmlRegistry(llama_cpp.llama_cpp._lib))

    def probe_device(self, nbytes: int) -> str:
        load_errors.clear()
        registry = GgmlRegistry(llama_cpp.llama_cpp._lib)
        return probe_device(registry, nbytes, lambda: "; ".join(load_errors))

    def close(self) -> None:
        self._warm.clear()

    # --- model files ----------------------------------------------------------------------

    def _local_models(self) -> dict[str, Path]:
        """``<models_root>/llm/*.gguf`` (any case) by stem, sorted."""
        try:
            entries = sorted(self._llm_dir.iterdir())
        except OSError:
            return {}
        return {p.stem: p for p in entries if p.suffix.lower() == ".gguf" and p.is_file()}

    def _model_file(self, ctx: JobContext) -> Path:
        source = ctx.model_source
        if not source.files:
            for stem, path in self._local_models().items():
                if ctx.model in (stem, path.name):
                    return path
            raise EngineError(
                f"model `{ctx.model}` not found in {self._llm_dir} and the offer's "
                "modelSource listed no files to download"
            )
        chosen = pick_gguf(source.files)
        if chosen is None:
            raise EngineError(f"llama modelSource for `{ctx.model}` contained no .gguf file")

        def on_progress(filename: str, done: int, total: int) -> None:
            ctx.progress("downloading", done, total, filename)

        paths = ensure_model_files(
            source,
            ctx.model,
            self.models_root,
            layout="llama",
            on_progress=on_progress,
            cancel=ctx.cancelled,
        )
        same_role = [f for f in source.files if f.role == chosen.role]
        index = next(i for i, f in enumerate(same_role) if f is chosen)
        return paths[chosen.role][index]

    # --- loading --------------------------------------------------------------------------

    def _ensure_loaded(self, ctx: JobContext, path: Path) -> LoadedModel:
        key = ctx.key_for(self.name)
        identity = FileIdentity.of(path)
        loaded = self._warm.use(key)
        if loaded is not None and loaded.identity == identity:
            n_train = loaded.n_ctx_train
        else:
            try:
                n_train = training_context(path)
            except (GgufFormatError, OSError) as exc:
                raise EngineError(f"{path.name} is not a usable GGUF model: {exc}") from exc
        n_ctx = effective_context(ctx.model_source.cli_defaults.context_size, n_train)
        if loaded is not None and loaded.identity == identity and loaded.n_ctx == n_ctx:
            return loaded
        self._warm.discard(key)  # the file changed on disk since it was loaded
        # Free before asking: the evicted models' memory is free when the supervisor decides.
        self._warm.make_room(self.max_warm_models)
        ctx.before_load(identity.size)
        ctx.progress("loading", 0, 1, path.name)
        started = time.monotonic()
        loaded = load_model(identity, n_ctx, n_train, self.threads)
        self.model_loads += 1
        self._warm.add(key, loaded, identity.size, files=[path])
        ctx.progress("loading", 1, 1, path.name)
        ctx.log(
            "info",
            f"loaded {path.name} n_ctx={n_ctx} n_ctx_train={loaded.n_ctx_train} "
            f"threads={self.threads} elapsed_ms={int((time.monotonic() - started) * 1000)}",
        )
        return loaded

    # --- prompt and generation ------------------------------------------------------------

    @staticmethod
    def _prompt_tokens(loaded: LoadedModel, task: LlmTask, source: ModelSource) -> list[int]:
        if loaded.chat_template is None:
            raise EngineError("model has no chat template (tokenizer.chat_template)")
        prompt = render_chat(
            loaded.chat_template,
            chat_messages(task),
            merge_kwargs(source.cli_defaults.chat_template_kwargs, task.chat_template_kwargs),
            bos_token=loaded.bos_text,
            eos_token=loaded.eos_text,
        )
        add_bos = should_add_bos(loaded.adds_bos, prompt, loaded.bos_text)
        tokens = loaded.llama.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        if not tokens:
            raise EngineError("the rendered chat prompt is empty")
        return tokens


ENGINE_CLASS = LlamaEngine

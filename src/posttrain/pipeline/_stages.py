"""The stages as runner steps: the one place that knows the stage list and calls each stage's public API.

detect → convert → register (Ollama, if reachable) → baseline → evaluate (each variant) →
evaluate_baseline → compare (all variants vs the baseline, one Holm family) → report → track
(experiment trackers, when configured) → notify.
Each adapter returns its step's typed outputs (`posttrain.contracts`: paths, hashes, store ids) and a
check that those outputs still exist, so a resumed run reuses what is there and redoes what is not. The heavy stages cache by
content themselves (convert's manifest, evaluate's result cache), so a step cut short by a crash
loses little when it runs again.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from posttrain._files import sha256_file, write_json_atomic
from posttrain.checkpoint import checkpoint_sha256, inspect_checkpoint
from posttrain.contracts import (
    BaselineOut,
    ConvertOut,
    DetectOut,
    DocumentOut,
    EvalOut,
    NotifyOut,
    NotifyOutcome,
    RegisterOut,
    Registration,
    ReportOut,
    RunLayout,
    ShipOut,
    TrackerOutcome,
    TrackOut,
    Variant,
    decode_outputs,
)
from posttrain.errors import CheckpointIncomplete, PosttrainError
from posttrain.pipeline._adapter_route import (
    QLORA_ROUTE,
    adapter_facts,
    build_routes,
    default_baseline,
)
from posttrain.pipeline._baseline import Baseline
from posttrain.pipeline._config import Config
from posttrain.pipeline._runner import (
    RunContext,
    RunSpec,
    Step,
    StepSkipped,
)

log = logging.getLogger("posttrain.pipeline")

BASELINE_LABEL = "baseline"


# -- planning ------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60] or "model"


def plan_run(checkpoint: str | Path, config: Config, *, known_sha256: str | None = None) -> RunSpec:
    """Check the checkpoint and name its run: the id comes from the checkpoint's content hash and the
    settings that change results, so the same command on the same checkpoint resumes the same run.

    This is the one place a run reads the checkpoint's bytes (none when the watcher already hashed
    it: `known_sha256`); later steps check the files' names, sizes and times against that moment."""
    from posttrain.convert import default_model_name

    checkpoint = Path(checkpoint).expanduser().resolve()
    verdict = inspect_checkpoint(checkpoint, settle_seconds=0, allow_pickle=config.allow_pickle, base=config.base)
    if not verdict.complete:
        raise CheckpointIncomplete(f"{checkpoint} is not a complete checkpoint: {verdict.reason}",
                                   remedy=getattr(verdict, "remedy", None)
                                   or "wait for training to finish, or `posttrain check` it")
    signature = verdict.content_signature()
    sha = known_sha256 or checkpoint_sha256(verdict)
    model_name = default_model_name(checkpoint)
    run_id = f"{_slug(model_name)}-{sha[:10]}-{config.fingerprint_sha256()[:8]}"
    settings = {**config.fingerprint(), "checkpoint": str(checkpoint), "ollama_url": config.ollama.url}
    return RunSpec(run_id=run_id, checkpoint=str(checkpoint), run_dir=config.run_dir(run_id), checkpoint_sha256=sha,
                   model_name=model_name, baseline=default_baseline(verdict, config.baseline), config=settings,
                   checkpoint_signature=[list(entry) for entry in signature])


def check_inputs(config: Config, *, baseline_may_appear: bool = False) -> None:
    """What can be checked before any work starts: a missing baseline or data directory fails now,
    not after an hour of conversion and evaluation. A watcher may be started before its baseline
    exists (the demo's early checkpoint is saved by the training it watches): `baseline_may_appear`."""
    if config.baseline:
        Baseline.parse(config.baseline).check(may_appear=baseline_may_appear)
    if config.data_dir is not None and not config.data_dir.is_dir():
        raise PosttrainError(f"data directory {config.data_dir} does not exist",
                             remedy="give the folder holding the benchmark files (gsm8k/, mmlu/, hellaswag/)")
    _check_task_names(config)


def _check_task_names(config: Config) -> None:
    """Unknown task names, with lm-eval's closest ones. Cheap for the usual cases (the offline
    families with --data-dir, the user's own task folders); only other names make lm-eval index its
    thousands of task files (seconds), which the evaluate step would do anyway."""
    from posttrain.evaluate import check_task_names, offline_family

    own: set[str] = set()
    if config.task_paths:
        from lm_eval.tasks import TaskManager

        own = set(TaskManager(include_path=[str(p) for p in config.task_paths], include_defaults=False).all_tasks)
    unknown = [t for t in config.tasks if t not in own and not (config.data_dir and offline_family(t))]
    if unknown:
        check_task_names(unknown)


# -- the stages ----------------------------------------------------------------------------------
class Stages:
    """Builds the step list for one configuration."""

    def __init__(self, config: Config):
        self.config = config

    def steps(self) -> list[Step]:
        return [
            Step("detect", self.detect, DetectOut, lambda o: o.checkpoint.is_dir()),
            # The steps that load llama.cpp or torch run in a child process (isolated): a native crash
            # then fails the step, and the watcher lives on.
            Step("convert", self.convert, ConvertOut, ConvertOut.intact, depends_on=("detect",), isolated=True),
            Step("register", self.register, RegisterOut, depends_on=("convert",)),
            Step("baseline", self.baseline, BaselineOut, self._baseline_ok, isolated=True),
            Step("evaluate", self.evaluate, EvalOut, depends_on=("convert",), isolated=True),
            Step("evaluate_baseline", self.evaluate_baseline, EvalOut, depends_on=("baseline",), isolated=True),
            Step("compare", self.compare, DocumentOut, self._document_ok, depends_on=("evaluate", "evaluate_baseline")),
            # Only with `ship = true`: a run without the ladder neither shows nor starts it.
            *([Step("ship", self.ship, ShipOut, lambda o: o.path.is_file(), depends_on=("convert", "evaluate"),
                    isolated=True)]
              if self.config.ship else []),
            Step("report", self.report, ReportOut, ReportOut.intact,
                 depends_on=("detect", "convert", "register", "evaluate", "evaluate_baseline", "compare"),
                 always=True),
            Step("track", self.track, TrackOut, self._track_ok, depends_on=("report",), always=True),
            Step("notify", self.notify, NotifyOut, depends_on=("report", "track"), always=True),
        ]

    # detect: the checkpoint must still be the one the run is named after (same files, sizes and times
    # as when the run was planned and hashed: no second read of the weights).
    def detect(self, ctx: RunContext) -> DetectOut:
        spec = ctx.spec
        verdict = inspect_checkpoint(spec.checkpoint, settle_seconds=0, allow_pickle=self.config.allow_pickle,
                                     base=self.config.base)
        if not verdict.complete:
            raise CheckpointIncomplete(f"{spec.checkpoint} is no longer a complete checkpoint: {verdict.reason}")
        sha = spec.checkpoint_sha256 or checkpoint_sha256(verdict)
        if spec.checkpoint_signature is not None and \
                [list(entry) for entry in verdict.content_signature()] != spec.checkpoint_signature:
            raise PosttrainError(f"{spec.checkpoint} changed since run {spec.run_id} began",
                                 remedy="run the command again: the new content gets its own run")
        return DetectOut(checkpoint=Path(spec.checkpoint), sha256=sha, architecture=verdict.architecture,
                         model_type=verdict.model_type, total_bytes=verdict.total_bytes,
                         model_name=spec.model_name, adapter=adapter_facts(verdict))

    def convert(self, ctx: RunContext) -> ConvertOut:
        from posttrain import _progress
        from posttrain.checkpoint import checkpoint_dtype
        from posttrain.convert import (
            base_reference,
            convert_checkpoint,
            convert_with_reference,
            load_manifest,
            plan_reference,
            quantizing_executor,
        )

        name = ctx.spec.model_name or "model"
        detect = ctx.output("detect", DetectOut)
        checkpoint, routes, c = ctx.spec.checkpoint, None, self.config
        if detect.adapter:  # a LoRA: merged here, its GGUF adapter beside the base
            base = Path(detect.adapter.base)
            routes = build_routes(checkpoint, c.base, detect.sha256, ctx.run_dir, c.gguf_dir(name), name,
                                  lambda quants: self._base_gguf(base, quants), base_reference(c.reference, base))
            checkpoint = routes.merged
        # F16 or BF16 as the model's reference (convert/_reference.py): BF16 is made beside F16 where
        # it may be the one, and chosen once convert has checked it against F16.
        # The machine profile, measured now if this CPU has none yet: a stage of its own on the display,
        # which then moves on to the conversion.
        with _progress.aside(then="converting to GGUF") as say:
            plan = plan_reference(c.reference, checkpoint_dtype(Path(checkpoint)), say=say)
        # The quantizer's variants as units on the executor (docs/executors.md), cancelled by a stop request.
        with quantizing_executor(c.quants, c.executor, ray_address=c.ray_address, shared_dir=c.shared_dir,
                                 stop=ctx.stop_requested) as executor:
            converted = convert_with_reference(
                lambda quants: convert_checkpoint(checkpoint, c.gguf_dir(name), quants, model_name=name,
                                                  allow_pickle=c.allow_pickle, n_gpu_layers=c.n_gpu_layers,
                                                  checkpoint_sha256=detect.sha256, executor=executor),
                plan, c.quants)
        result = converted.result
        manifest = load_manifest(result.out_dir)  # kept with each variant's row: its checks and toolchain
        toolchain = result.toolchain.get("llama_cpp_python")
        for v in result.variants:
            ctx.store.variants.put(sha256=v.sha256, path=str(v.path), quant=v.quant, model_name=result.model_name,
                                   checkpoint_sha256=result.checkpoint_sha256, size_bytes=v.size_bytes,
                                   toolchain=toolchain and f"llama-cpp-python {toolchain}", manifest=manifest)
        return ConvertOut(model_name=result.model_name, manifest=Path(result.manifest_path),
                          variants=converted.variants, routes=routes, reference=converted.reference)

    def _base_gguf(self, path: Path, quants: list[str]) -> dict[str, Path]:
        from posttrain.convert import convert_checkpoint, default_model_name

        name = default_model_name(path)  # the same folder and name as the baseline step's: converted once
        result = convert_checkpoint(path, self.config.gguf_dir(name), quants, model_name=name,
                                    allow_pickle=self.config.allow_pickle, n_gpu_layers=self.config.n_gpu_layers)
        return {v.quant: v.path for v in result.variants}

    def register(self, ctx: RunContext) -> RegisterOut:
        from posttrain.serve import register_variants

        o = self.config.ollama
        # convert's own record of what it made and verified: nothing is rediscovered or hashed again.
        convert = ctx.output("convert", ConvertOut)
        variants = list(convert.variants)
        lora = convert.adapter
        if lora:  # the base's 16-bit GGUF with the adapter on top: Ollama's ADAPTER
            variants.append(Variant(path=lora.base_gguf, quant=lora.label.replace("+", "-"),
                                    sha256=lora.base_sha256, model_name=convert.model_name,
                                    checkpoint=Path(ctx.spec.checkpoint), adapter=lora.lora,
                                    adapter_sha256=lora.lora_sha256))
        regs = register_variants(variants, url=o.url, params={"temperature": o.temperature, "top_p": o.top_p,
                                                           "num_ctx": o.num_ctx},
                                 store=ctx.store, checkpoint=Path(ctx.spec.checkpoint))
        if regs and all(r.status.startswith("skipped") for r in regs):
            raise StepSkipped(regs[0].status.removeprefix("skipped: "))
        return RegisterOut(tuple(Registration(name=r.name, quant=r.quant, status=r.status, template=r.template_family,
                                              warnings=tuple(r.warnings)) for r in regs))

    # baseline: an HF directory (converted once, cached by content: F16, or BF16 beside a BF16 reference
    # where that is its exact weights), a .gguf, or ollama:NAME.
    def baseline(self, ctx: RunContext) -> BaselineOut:
        ref = self.config.baseline or ctx.spec.baseline  # an adapter's base when none was given
        if not ref:
            raise StepSkipped("no baseline given (--baseline or `baseline` in posttrain.toml)")
        baseline = Baseline.parse(ref)
        if baseline.is_ollama:
            return BaselineOut(model=ref, source=ref)
        path = baseline.path.resolve()
        if baseline.is_gguf:
            return BaselineOut(model=str(path), source=ref, sha256=sha256_file(path))
        if baseline.is_checkpoint:
            from posttrain.convert import base_reference, convert_checkpoint, default_model_name

            name = f"{default_model_name(path)}"
            quant = base_reference(self.config.reference, path)
            result = convert_checkpoint(path, self.config.gguf_dir(name), [quant], model_name=name,
                                        allow_pickle=self.config.allow_pickle, n_gpu_layers=self.config.n_gpu_layers)
            made = result.variant(quant)
            return BaselineOut(model=str(made.path), source=ref, sha256=made.sha256)
        raise baseline.not_found()

    @staticmethod
    def _baseline_ok(out: BaselineOut) -> bool:
        return Baseline.parse(out.model).is_ollama or (Path(out.model).is_file()
                                                       and sha256_file(Path(out.model)) == out.sha256)

    def _evaluate_one(self, ctx: RunContext, model: str | Path, label: str,
                      lora: Path | None = None) -> tuple[int, ...]:
        from posttrain.evaluate import evaluate, sharded

        c = self.config
        # Only when set: task directories are an extension of evaluate's signature.
        extra = {"task_paths": list(c.task_paths)} if c.task_paths else {}
        if c.n_gpu_layers is not None:
            extra["n_gpu_layers"] = c.n_gpu_layers
        if lora:
            extra["lora"] = lora
        with sharded(c.executor, ray_address=c.ray_address, shared_dir=c.shared_dir, data_dir=c.data_dir,
                     task_paths=list(c.task_paths) or None, shard_docs=c.shard_docs,
                     stop=ctx.stop_requested) as shards:
            if shards is not None:  # an executor other than today's in-process path (docs/executors.md)
                extra["shards"] = shards
            results = evaluate(str(model), c.tasks, data_dir=c.data_dir, limit=c.limit, per_subject=c.per_subject,
                               seed=c.seed, store=ctx.store, out_dir=RunLayout(ctx.run_dir).evals(_slug(label)),
                               ollama_url=c.ollama.url, label=label, **extra)
        return tuple(r.eval_id for r in results)

    def evaluate(self, ctx: RunContext) -> EvalOut:
        evals: dict[str, tuple[int, ...]] = {}
        sources: dict[str, str] = {}
        name = ctx.spec.model_name or "model"
        convert = ctx.output("convert", ConvertOut)
        for v in convert.variants:
            label = f"{name}-{v.quant}"
            evals[label] = self._evaluate_one(ctx, v.path, label)
            sources[label] = str(v.path)
            ctx.store.run_evals.link(ctx.run_id, "candidate", label, list(evals[label]))
        lora = convert.adapter
        if lora:  # the adapter route: the base's 16-bit GGUF with the GGUF LoRA applied by llama.cpp
            for suffix, base in ((lora.label, lora.base_gguf), (QLORA_ROUTE, lora.base_4bit_gguf)):
                if base:  # the 4-bit base only for a QLoRA: the condition it was trained in
                    label = f"{name}-{suffix}"
                    evals[label] = self._evaluate_one(ctx, base, label, lora=lora.lora)
                    sources[label] = f"{base} + {lora.lora}"
                    ctx.store.run_evals.link(ctx.run_id, "candidate", label, list(evals[label]))
        return EvalOut(evals=evals, sources=sources)

    def evaluate_baseline(self, ctx: RunContext) -> EvalOut:
        baseline = ctx.output("baseline", BaselineOut)
        ids = self._evaluate_one(ctx, baseline.model, BASELINE_LABEL)
        ctx.store.run_evals.link(ctx.run_id, "baseline", BASELINE_LABEL, list(ids))
        return EvalOut(evals={BASELINE_LABEL: ids}, sources={BASELINE_LABEL: baseline.source})

    def compare(self, ctx: RunContext) -> DocumentOut:
        from posttrain.compare import compare_family, items_for_evals

        def items(ids: tuple[int, ...]):
            return items_for_evals(ctx.store, list(ids))[1]

        candidates, baseline = ctx.output("evaluate", EvalOut), ctx.output("evaluate_baseline", EvalOut)
        base_items = items(baseline.evals[BASELINE_LABEL])
        pairs = [(label, items(ids), BASELINE_LABEL, base_items) for label, ids in sorted(candidates.evals.items())]
        doc = compare_family(pairs, seed=self.config.seed, sources={**candidates.sources, **baseline.sources})
        path = RunLayout(ctx.run_dir).compare_json
        return DocumentOut(path=path, sha256=write_json_atomic(path, doc))

    @staticmethod
    def _document_ok(out: DocumentOut) -> bool:
        return out.path.is_file() and sha256_file(out.path) == out.sha256

    def ship(self, ctx: RunContext) -> ShipOut:
        """The quant ladder over this run's variants: their evaluations are reused from the store."""
        from posttrain.ship import run_ladder

        c, name = self.config, ctx.output("convert", ConvertOut).model_name
        # The evaluate step's results by quant (its labels are `<model>-<QUANT>`): not evaluated again.
        evaluated = {label.removeprefix(f"{name}-"): ids
                     for label, ids in ctx.output("evaluate", EvalOut).evals.items() if label.startswith(f"{name}-")}
        doc = run_ladder(ctx.spec.checkpoint, out_dir=ctx.run_dir, store=ctx.store, tasks=c.tasks, data_dir=c.data_dir,
                         quants=c.quants, text=c.ship_text, margin_points=c.ship_margin, max_kld=c.ship_max_kld,
                         alpha=c.ship_alpha, n_ctx=c.ship_n_ctx, max_tokens=c.ship_max_tokens, speed=c.ship_speed,
                         speed_reps=c.ship_speed_reps,
                         limit=c.limit, per_subject=c.per_subject, seed=c.seed, n_gpu_layers=c.n_gpu_layers,
                         model_name=name, task_paths=list(c.task_paths) or None, gguf_dir=c.gguf_dir(name),
                         imatrix_text=c.ship_imatrix_text, checkpoint_sha256=ctx.spec.checkpoint_sha256,
                         evaluations=evaluated)
        verdict = doc["verdict"]
        return ShipOut(path=RunLayout(ctx.run_dir).ship_json, sentence=verdict["sentence"], pick=verdict["pick"],
                       strength=verdict.get("strength"))

    @staticmethod
    def _compare_doc(ctx: RunContext) -> dict:
        """What this run's compare step wrote (verified by its hash when the step finished), or {}."""
        from posttrain.compare import read_compare

        out = ctx.output_if_done("compare", DocumentOut)
        return read_compare(out.path) if out else {}

    def _after(self, name: str) -> list[str]:
        """The steps after `name`: when it runs, they have not run yet in this attempt. (A resumed run
        has rows for them from the attempt before; a report that showed those would differ from the
        report of a run that was never interrupted.)"""
        names = [s.name for s in self.steps()]
        return names[names.index(name) + 1:]

    def report(self, ctx: RunContext) -> ReportOut:
        from posttrain.report import report_from_store

        if ctx.output_if_done("compare", DocumentOut) is None:
            # A run that failed before compare must not show a stale comparison from an earlier attempt.
            RunLayout(ctx.run_dir).compare_json.unlink(missing_ok=True)
        # Written before the run ends: it shows the outcome the run is heading for, which the runner
        # records when it closes the run (track and notify, the later steps, never fail it).
        paths = report_from_store(ctx.store, ctx.run_id, ctx.run_dir, outcome=ctx.outcome,
                                  compare=self._compare_doc(ctx), not_yet=self._after("report"))
        return ReportOut(html=paths["html"], md=paths["md"], json=paths["json"])

    # track: never fails the run. A tracker that could not record it (after its retries) makes the
    # step "skipped" with the reason, so the same command tries again; the report, rewritten here, and
    # the notification say so.
    def track(self, ctx: RunContext) -> TrackOut:
        from posttrain.report import report_from_store
        from posttrain.track import track_finished_run

        c = self.config
        if not c.track:
            raise StepSkipped("no tracker configured (--track mlflow, --track wandb, or `track` in posttrain.toml)")
        try:
            run = ctx.store.runs.get(ctx.run_id)
            outcomes = track_finished_run(ctx.store, run, ctx.store.steps.of_run(ctx.run_id), outcome=ctx.outcome,
                                          trackers=c.track, home=c.base_dir, artifacts=c.track_artifacts,
                                          attempts=c.retries, backoff_s=c.retry_backoff_s)
        except Exception as e:  # e.g. the store busy beyond its timeout: still not a reason to fail the run
            log.exception("run %s: tracking could not start", ctx.run_id)
            raise StepSkipped(f"not tracked: {type(e).__name__}: {e}; the same command tries again") from e
        report = RunLayout(ctx.run_dir).report_json
        try:
            report_from_store(ctx.store, ctx.run_id, ctx.run_dir, outcome=ctx.outcome, compare=self._compare_doc(ctx),
                              not_yet=self._after("track"))
        except Exception:  # the report written by the report step stands; tracking is a courtesy
            log.exception("run %s: the report could not be rewritten with the tracking outcome", ctx.run_id)
        tracked = decode_outputs(tuple[TrackerOutcome, ...], outcomes)
        failed = [o for o in tracked if not o.ok]
        if failed:
            raise StepSkipped("not tracked in " + "; ".join(f"{o.tracker} ({o.error})" for o in failed)
                              + "; the same command tries again")
        return TrackOut(trackers=tracked, report=report,
                        report_sha256=sha256_file(report) if report.is_file() else None)

    @staticmethod
    def _track_ok(out: TrackOut) -> bool:
        # Reused while the report is the one the trackers were sent (a resumed run that changed it tracks
        # again). A run whose report step failed was tracked without one: nothing to compare.
        if out.report_sha256 is None:
            return True
        return out.report.is_file() and sha256_file(out.report) == out.report_sha256

    def notify(self, ctx: RunContext) -> NotifyOut:
        from posttrain.notify import NotifySummary, notify
        from posttrain.track import read_tracking

        run = ctx.store.runs.get(ctx.run_id)
        compare = self._compare_doc(ctx) or None
        failures = [{"step": name, "error": err} for name, (status, err) in ctx.step_status.items()
                    if status == "failed"]
        report_out = ctx.output_if_done("report", ReportOut)
        report = str(report_out.html) if report_out else None
        run["status"] = ctx.outcome
        tracking = [o for o in read_tracking(ctx.run_dir) if not o.get("ok")] if self.config.track else []
        summary = NotifySummary.from_run(run, compare, failures, report, tracking=tracking)
        outcomes = notify(summary, urls=self.config.notify.urls, voice=self.config.notify.voice)
        return NotifyOut(tuple(NotifyOutcome(channel=o["channel"], target=o.get("target"), ok=bool(o.get("ok")),
                                             skipped=bool(o.get("skipped")), detail=o.get("detail"))
                               for o in outcomes))

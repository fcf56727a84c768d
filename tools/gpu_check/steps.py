"""The check's steps: T4 fits, loading RAM, each decoding method, load/unload cycles, LoRA training, a sweep."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from helpers.memory.bytes import weight_bytes
from helpers.opt.sizes import OPTSize

from .profile import COLAB_RAM_BYTES, COLAB_RAM_USED_AT_START_BYTES, T4, Unavailable
from .run import Run, cuda_allocated, log_line

# ------------------------------------------------------------------------------------------ the steps


class Check:
    """The steps of `make gpu-check`, in the order a Colab user's questions rank: fits first, then speed."""

    def __init__(self, run: Run):
        self.run, self.p = run, run.profile
        self.folders: dict[str, Path] = {}
        self.small_reports: list = []

    @property
    def torch_dtype(self):
        from helpers.memory.dtypes import resolve_dtype

        return resolve_dtype(self.p.dtype, self.p.device)

    def _write_folder(self, size: OPTSize, role: str) -> dict:
        from helpers.opt.random_weights import save_random_model

        folder = self.run.scratch / size.name
        need = weight_bytes(size, self.p.dtype) * 1.05
        free = shutil.disk_usage(self.run.scratch).free
        if free < need:
            raise RuntimeError(f"{free / 1e9:.1f} GB of disk free in {self.run.scratch}, {size.name} needs "
                               f"{need / 1e9:.1f} GB: pass --scratch on a larger disk")
        save_random_model(size, folder, dtype=self.torch_dtype, device=self.p.device, max_shard_size=self.p.shard_size)
        self.folders[role] = folder
        files = [{"name": f.name, "bytes": f.stat().st_size} for f in sorted(folder.iterdir())]
        return {"folder": str(folder), "files": files,
                "weight_file_bytes": sum(f["bytes"] for f in files if f["name"].endswith(".safetensors"))}

    def _remove(self, role: str) -> None:
        folder = self.folders.pop(role, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def remove_folders(self) -> None:
        """Every weights folder the check wrote (at its end, however it ended)."""
        for role in list(self.folders):
            self._remove(role)

    def _option(self, size: OPTSize, method: str, context: int, batch: int = 1):
        """The planner's option for `method` under the run's budget: the prediction a check is measured
        against (a plan this machine cannot use is `Unavailable`, with the planner's reason)."""
        from helpers.errors import ModelLoadError
        from helpers.memory.planner import Budget, choose, plan

        budget = Budget.of_machine(gpu_bytes=self.p.gpu_memory)
        try:
            return choose(plan(size, budget, context=context, batch=batch), method, model=size.name, budget=budget)
        except ModelLoadError as exc:
            raise Unavailable(str(exc)) from None

    def _predicted(self, size: OPTSize, method: str, context: int, batch: int = 1) -> dict:
        """The planner's peak for `method` and whether it fits the run's budget, fitting or not."""
        from helpers.memory.planner import Budget, plan

        option = next((o for o in plan(size, Budget.of_machine(gpu_bytes=self.p.gpu_memory), context=context,
                                       batch=batch) if o.plan == method), None)
        if option is None:
            return {"planner_peak_bytes": None, "planner_fits": None}
        return {"planner_peak_bytes": option.predicted_peak_bytes, "planner_fits": option.fits}

    # ---- the medium model: fp16 under a T4's budget, loading RAM, the batch sweep

    def load_ram(self) -> dict:
        result = self.run.child("load-ram", folder=str(self.folders["medium"]), method=self.p.fit_plan,
                                gpu_memory=self.p.gpu_memory)
        peak = result["peak_resident_bytes"]
        predicted = result["predicted_ram_bytes"]
        result.update(
            colab_ram_bytes=COLAB_RAM_BYTES, fits_colab_ram=peak < COLAB_RAM_BYTES,
            colab_headroom_bytes=COLAB_RAM_BYTES - COLAB_RAM_USED_AT_START_BYTES - peak,
            relative_error=(predicted - peak) / peak if predicted and peak else None,
        )
        return result

    def fit(self, role: str, method: str, new_tokens: int, contexts: tuple[int, ...]) -> dict:
        """`plan --check` under the budget: the first context on generate()'s default path; if that runs
        out of memory, the eager cached loop at the same context (on a GPU, where the default compiles),
        then the shorter contexts, until one fits."""
        size = getattr(self.p, role)
        option = self._option(size, method, contexts[0])
        attempts = [(contexts[0], "auto")]
        if self.p.device == "cuda" and method == self.p.fit_plan:  # where auto means compiling
            attempts.append((contexts[0], "cached"))
        attempts += [(c, "auto") for c in contexts[1:]]
        results = []
        for context, generation in attempts:
            outcome = self.run.child("fit", folder=str(self.folders[role]), method=method, gpu_memory=self.p.gpu_memory,
                                     context=context, new_tokens=min(new_tokens, context - 1),
                                     generation_method=generation)
            outcome.update(self._predicted(size, method, context))
            results.append(outcome)
            if outcome["fits"]:
                break
        first = results[0]
        return {"model": size.name, "method": method, "budget_bytes": self.p.gpu_memory, "option": option.as_dict(),
                "fits": first["fits"], "attempts": results,
                "fits_with": next(({"context": r["context"], "generation_method": r["generation_method"]}
                                   for r in results if r["fits"]), None)}

    def large_fit(self) -> dict:
        self._option(self.p.large, self.p.quantized_plan, self.p.context)  # unavailable here: before writing 26 GB
        try:
            written = self._write_folder(self.p.large, "large")
            result = self.fit("large", self.p.quantized_plan, self.p.large_new_tokens,
                              (self.p.context, self.p.context // 2))
        finally:
            self._remove("large")
        result["folder"] = written
        return result

    def sweep(self) -> dict:
        from helpers.memory.planner import CUDA_CONTEXT_BYTES

        p = self.p
        report = self.run.out / f"gpu-{p.medium.name}.json"
        result = self.run.child("sweep", size=asdict(p.medium), device=p.device, dtype=p.dtype,
                                batches=list(p.sweep_batches), new_tokens=p.sweep_new_tokens, repeats=p.sweep_repeats,
                                report=str(report))
        for row in result["rows"]:
            if row["skipped"]:
                continue
            row.update(self._predicted(p.medium, p.fit_plan, row["prompt_tokens"] + row["new_tokens"], row["batch"]))
            if p.device == "cuda":  # measured on the whole card; a T4 holds the batch if the peak fits its budget
                row["fits_t4"] = row["peak_memory_bytes"] + CUDA_CONTEXT_BYTES <= T4.gpu_bytes
        return result

    # ---- the small model: every decoding method, then load/unload cycles

    def method(self, name: str) -> dict:
        from helpers.analysis.benchmark import run_suite

        try:
            report = run_suite(str(self.folders["small"]), [name], device=self.p.device, dtype=self.p.dtype,
                               new_tokens=self.p.new_tokens, repeats=self.p.repeats, progress=log_line)
        except ImportError as exc:  # transformers' words for a missing bitsandbytes
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        report.model = f"{self.p.small.name} (random weights)"
        self.small_reports.append(report)
        measurement = report.measurements[0]
        if measurement.skipped:
            raise Unavailable(measurement.skipped)
        return {"measurement": measurement.as_dict(), "bandwidth": report.bandwidth}

    def leaks(self) -> dict:
        from tools.leaks import leak_check

        before = cuda_allocated()
        result = leak_check(str(self.folders["small"]), self.p.leak_cycles, device=self.p.device, progress=log_line)
        after = result["cuda_allocated_bytes_after_each"]
        result.update(cuda_allocated_before_bytes=before,
                      cuda_left_after_last_bytes=after[-1] - (before or 0) if after else None)
        return result

    def train(self, role: str, plan: str) -> dict:
        """A few LoRA steps on the role's folder with `plan` under the budget (a fresh process)."""
        p = self.p
        return self.run.child("train", folder=str(self.folders[role]), plan=plan, gpu_memory=p.gpu_memory,
                              seq_len=p.train_seq_len, batch=p.train_batch, rank=16, steps=p.train_steps)

    # ---- the order

    def all(self) -> None:
        """Fits under the T4 budget first, then the small model's methods and cycles, then the sweep: the
        order in which they answer a Colab user, so a run cut short by its budget loses the least."""
        run, p = self.run, self.p
        run.step("medium-folder", lambda: self._write_folder(p.medium, "medium"), model=p.medium.name,
                 wanted=any(run.selected(f"medium-{name}") for name in ("load-ram", "fit", "train")))
        need = ("medium-folder",)
        run.step("medium-load-ram", self.load_ram, requires=need, model=p.medium.name)
        run.step("medium-fit", lambda: self.fit("medium", p.fit_plan, p.fit_new_tokens, (p.context,)),
                 requires=need, model=p.medium.name)
        small_plan, medium_plan = p.train_plans
        run.step(f"medium-train-{medium_plan}", lambda: self.train("medium", medium_plan), requires=need,
                 model=p.medium.name, plan=medium_plan)
        self._remove("medium")  # the disk holds one large checkpoint at a time
        run.step("large-fit", self.large_fit, model=p.large.name)
        run.step("small-folder", lambda: self._write_folder(p.small, "small"), model=p.small.name,
                 wanted=any(run.selected(f"small-{name}") for name in (*p.methods, "leaks", "train")))
        for name in p.methods:
            run.step(f"small-{name}", lambda name=name: self.method(name), requires=("small-folder",),
                     model=p.small.name, method=name)
        run.step("small-leaks", self.leaks, requires=("small-folder",), model=p.small.name)
        run.step(f"small-train-{small_plan}", lambda: self.train("small", small_plan), requires=("small-folder",),
                 model=p.small.name, plan=small_plan)
        self._remove("small")
        run.step("medium-sweep", self.sweep, model=p.medium.name)

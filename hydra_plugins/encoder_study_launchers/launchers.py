"""Hydra's sequential launcher and submitit's local and SLURM launchers, each finishing a sweep whatever
its jobs do:
- every job's outcome is collected, a job that died without a result (OOM, scancel) included, where the
  stock submitit launcher stops waiting at the first such job;
- the sweep ends with one line per failed job, naming its run folder and its error, and exits non-zero;
- a SLURM request the cluster cannot meet stops the sweep in one line before anything is submitted;
- local parallel jobs get one intra-op thread each (``torch_threads=1``) unless the sweep sets it.

Imported when Hydra scans its plugins: nothing heavy at module level.
"""
import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

from hydra_plugins.encoder_study_launchers import slurm_jobs
from runtime.errors import first_line

log = logging.getLogger(__name__)


def error_of(job: JobReturn) -> BaseException:
    """A failed job's exception. Hydra's JobReturn raises it from ``return_value`` (and announces the job's
    overrides on stderr, which this launcher's own line replaces)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            job.return_value
    except BaseException as error:  # the job's own, whatever it was: SystemExit and KeyboardInterrupt too
        return error
    raise ValueError("the job did not fail")


class ReportsFailures:
    def launch(self, job_overrides, initial_job_idx):
        returns = self.launch_all(job_overrides, initial_job_idx)
        failed = [(num, job, overrides) for num, (job, overrides) in enumerate(zip(returns, job_overrides),
                                                                                 initial_job_idx)
                  if job.status == JobStatus.FAILED]
        for num, job, overrides in failed:
            print(f"failed: {self.run_dir(job, overrides, num)}: {first_line(error_of(job))}", file=sys.stderr)
        if failed:
            sys.exit(f"error: {len(failed)} of {len(returns)} jobs failed (their lines above); the others finished")
        return returns

    def run_dir(self, job: JobReturn, overrides, num: int) -> str:
        if job.hydra_cfg is not None:
            return job.hydra_cfg.hydra.runtime.output_dir
        return self.planned_run_dir(overrides, num)  # a job that died without a result

    def planned_run_dir(self, overrides, num: int) -> str:
        """A job's folder as the launcher composes it (the subdir may use the job num)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
        return str(Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir))


class SequentialLauncher(ReportsFailures, Launcher):
    """Hydra's basic launcher (one job after another in this process), on Hydra's public job API."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch_all(self, job_overrides, initial_job_idx):
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        returns = []
        for num, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = num
            returns.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns


class SubmititReportsFailures(ReportsFailures):
    """hydra-submitit-launcher's launch, collecting every job's outcome: its own stops at the first job
    without a result; here such a job becomes a failed JobReturn and the launcher waits for the rest."""
    cluster: str  # submitit's executor: local or slurm

    def launch_all(self, job_overrides, initial_job_idx):
        import submitit
        from submitit.core.utils import FailedJobError, UncompletedJobError

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        init = {f"{self.cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
        executor = submitit.AutoExecutor(cluster=self.cluster, folder=folder, **init)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"{self.cluster}_{key}": value
                                      for key, value in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self.cluster}' sweep output dir : {sweep_dir}")
        jobs_params = []
        for num, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            jobs_params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*jobs_params))
        run_dirs = [Path(self.planned_run_dir(overrides, num))
                    for num, overrides in enumerate(job_overrides, initial_job_idx)]
        views = self.watch(jobs, run_dirs)
        returns = []
        for job, run_dir in zip(jobs, run_dirs):
            try:
                returns.append(job.results()[0])
            except (FailedJobError, UncompletedJobError) as error:
                died = JobReturn(status=JobStatus.FAILED)
                died.return_value = RuntimeError(self.lost_line(job, views, run_dir) or
                                                 f"{type(error).__name__} (job state {job.state}): {first_line(error)}")
                returns.append(died)
        return returns

    def watch(self, jobs, run_dirs) -> dict:
        """Follow the jobs until each has ended for good (job.results() then only collects)."""
        return {}

    def lost_line(self, job, views: dict, run_dir: Path) -> str | None:
        """Why a job without a result ended, where the cluster can say it better than submitit."""
        return None


class LocalLauncher(SubmititReportsFailures, submitit_launcher.LocalLauncher):
    cluster = "local"

    def launch_all(self, job_overrides, initial_job_idx):
        # the jobs run side by side: one intra-op thread each, unless the sweep says otherwise
        job_overrides = [list(o) if any(x.startswith("torch_threads=") for x in o) else [*o, "torch_threads=1"]
                         for o in job_overrides]
        return super().launch_all(job_overrides, initial_job_idx)


class SlurmLauncher(SubmititReportsFailures, submitit_launcher.SlurmLauncher):
    cluster = "slurm"

    def launch_all(self, job_overrides, initial_job_idx):
        problem = cluster_problem(self.params, self.config.trainer)
        if problem:
            sys.exit(f"error: {problem}")
        extra = self.params.get("additional_parameters") or {}
        if extra.get("requeue") is False:  # submitit would write --requeue=False, which sbatch refuses
            self.params["additional_parameters"] = {**{k: v for k, v in extra.items() if k != "requeue"},
                                                    "no_requeue": True}
        return super().launch_all(job_overrides, initial_job_idx)

    def watch(self, jobs, run_dirs) -> dict:
        return slurm_jobs.watch([job.job_id for job in jobs], run_dirs, log)

    def lost_line(self, job, views: dict, run_dir: Path) -> str | None:
        line = slurm_jobs.lost_line(job.job_id, views.get(job.job_id))
        if line:
            slurm_jobs.mark_interrupted(run_dir, line)
        return line


def sinfo(partition: str | None, field: str) -> list[str]:
    command = ["sinfo", "--noheader", "--format", field] + (["--partition", partition] if partition else [])
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


def gpus(gres: str) -> int:
    """GPUs in a node's gres, e.g. gpu:4 or gpu:a100:8(S:0-1); 0 for (null)."""
    counts = [part.split("(")[0].split(":")[-1] for part in gres.split(",") if part.startswith("gpu")]
    return sum(int(count) for count in counts if count.isdigit())


def cluster_problem(launcher: dict, trainer) -> str | None:
    """What the cluster cannot give this sweep, in one line; None when it can."""
    devices, tasks = trainer.devices, launcher["tasks_per_node"]
    gpus_per_node = launcher.get("gpus_per_node") or 0
    if isinstance(devices, int) and devices > 0 and tasks != devices:
        return (f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}: Lightning under SLURM "
                f"runs one task per device")
    if devices == -1 and tasks != gpus_per_node:
        return f"trainer.devices=-1 (all) needs hydra.launcher.tasks_per_node = gpus_per_node, got {tasks} and " \
               f"{gpus_per_node}"
    if launcher["nodes"] != trainer.get("num_nodes", 1):
        return f"hydra.launcher.nodes={launcher['nodes']} but trainer.num_nodes={trainer.get('num_nodes', 1)}"
    partition = launcher.get("partition")
    try:
        partitions = sinfo(None, "%P")
    except (OSError, subprocess.CalledProcessError) as error:
        return f"no SLURM cluster answers (sinfo: {first_line(error)}); hydra/launcher=local runs the sweep here"
    names = [name.rstrip("*") for name in partitions]
    if partition and partition not in names:
        return f"unknown partition {partition!r}; the cluster has {sorted(set(names))}"
    partition = partition or next((name.rstrip("*") for name in partitions if name.endswith("*")), names[0])
    nodes = sum(int(count) for count in sinfo(partition, "%D"))  # one count per group of nodes in a state
    if launcher["nodes"] > nodes:
        return f"{launcher['nodes']} nodes requested (trainer.num_nodes), but partition {partition} has {nodes}"
    node_gpus = max(gpus(gres) for gres in sinfo(partition, "%G"))
    node_cpus = max(int(cpus) for cpus in sinfo(partition, "%c"))
    wanted_gpus = max(gpus_per_node, tasks if trainer.accelerator == "gpu" else 0)
    if wanted_gpus > node_gpus:
        return f"{wanted_gpus} GPUs per node requested, but the nodes of partition {partition} have {node_gpus}"
    node_mb = max(int(memory.rstrip("+")) for memory in sinfo(partition, "%m"))
    if launcher.get("mem_gb") and launcher["mem_gb"] * 1024 > node_mb:
        return f"hydra.launcher.mem_gb={launcher['mem_gb']} per node, but the nodes of partition {partition} have " \
               f"{node_mb / 1024:.1f} GB"
    wanted_cpus = tasks * (launcher.get("cpus_per_task") or 1)
    if wanted_cpus > node_cpus:
        return f"{wanted_cpus} CPUs per node requested (tasks_per_node x cpus_per_task), but the nodes of " \
               f"partition {partition} have {node_cpus}"
    return None

"""What SLURM says of a sweep's jobs, read from slurmctld (``scontrol``) while it remembers them: sacct, which
submitit polls, lags behind it and shows a requeued job's NODE_FAIL for a moment before the job is pending
again, long enough for submitit to take the job for ended and lost.

A job requeued after it lost its node (or was preempted, or requeued by hand) comes back with its Restarts
count one higher; until its next start its run folder says ``interrupted`` and why, in sacct's words."""
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.files import write_json
from runtime.run_folder import LIVE, read_metrics

# a job in these states has not ended for good (it may still be requeued, or is waiting to start again)
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
              "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


@dataclass(frozen=True)
class JobView:
    state: str
    restarts: int
    nodes: str  # the nodes it runs on (empty while pending)

    @property
    def ended(self) -> bool:
        return self.state not in UNFINISHED


def field_values(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", line))


def task_ids(spec: str) -> list[str]:
    """An array's task ids as scontrol shows the tasks still pending together: ``0-3,7`` (``%2``: a throttle)."""
    ids = []
    for part in filter(None, spec.split("%")[0].split(",")):
        first, _, last = part.partition("-")
        ids += [str(task) for task in range(int(first), int(last or first) + 1)]
    return ids


def scontrol_views(job_ids: list[str]) -> dict[str, JobView]:
    """The jobs slurmctld still knows (it forgets an ended job after MinJobAge, 300 s by default), by
    submitit's id: ``<array>_<task>`` for an array's task, ``<job>`` otherwise."""
    views = {}
    for base in sorted({job_id.split("_")[0] for job_id in job_ids}):
        shown = subprocess.run(["scontrol", "show", "job", "-o", base], capture_output=True, text=True)
        for line in shown.stdout.splitlines():
            fields = field_values(line)
            view = JobView(fields.get("JobState", "UNKNOWN"), int(fields.get("Restarts", 0)),
                           "" if fields.get("NodeList") == "(null)" else fields.get("NodeList", ""))
            if "ArrayTaskId" in fields:
                views |= {f"{fields['ArrayJobId']}_{task}": view for task in task_ids(fields["ArrayTaskId"])}
            else:
                views[fields.get("JobId", "")] = view
    return views


def sacct_runs(job_id: str) -> list[tuple[str, str]]:
    """(state, nodes) of each run of the job that sacct has recorded, oldest first."""
    shown = subprocess.run(["sacct", "-n", "-X", "-P", "--duplicates", "-o", "State,NodeList", "-j", job_id],
                           capture_output=True, text=True).stdout.splitlines()
    return [tuple(line.split("|", 1)) for line in shown if "|" in line]


def ended_run(job_id: str, restart: int) -> tuple[str, str] | None:
    """How the run that restart ``restart`` of the job followed ended (its state, its nodes); None until
    slurmdbd has recorded that end, which can take some seconds after slurmctld requeued the job."""
    runs = sacct_runs(job_id)
    if len(runs) < restart or runs[restart - 1][0] in ("PENDING", "RUNNING"):
        return None
    return runs[restart - 1]


def mark_interrupted(run_dir: Path, why: str, replacing: str | None = None) -> None:
    """A run whose process died without a word (its node lost) says so in its metrics.json, which still names
    that process as live, until its next start writes the file again. ``replacing``: a line written before,
    which ``why`` says better."""
    metrics = read_metrics(run_dir)
    if metrics.get("status") not in LIVE and (replacing is None or metrics.get("interrupted") != replacing):
        return  # it wrote its own status (SIGTERM: interrupted), or never started
    metrics.pop("process", None)
    write_json(run_dir / "metrics.json", {**metrics, "status": "interrupted", "interrupted": why})


def requeue_line(job_id: str, restart: int, state: str, nodes: str) -> str:
    return f"job {job_id} ended {state or 'its run'} on {nodes}; requeued (restart {restart}): it resumes from " \
           f"its last checkpoint"


def watch(job_ids: list[str], run_dirs: list[Path], log, poll_s: float = 2.0,
          sacct_lag_s: float = 30.0) -> dict[str, JobView]:
    """Wait until slurmctld says every job has ended for good or forgets it; on each requeue, mark the job's
    run folder interrupted, in sacct's words once it has recorded how the run ended (within sacct_lag_s).
    Returns the last view of each job it saw."""
    last: dict[str, JobView] = {}
    unexplained: dict[str, tuple[float, str]] = {}  # requeued, until sacct says how its run ended
    while True:
        views = scontrol_views(job_ids)
        for job_id, run_dir in zip(job_ids, run_dirs):
            view = views.get(job_id)
            if view is None:
                continue
            seen = last.get(job_id)
            if view.restarts > (seen.restarts if seen else 0):
                guess = requeue_line(job_id, view.restarts, "", seen.nodes if seen else "its node")
                unexplained[job_id] = (time.monotonic(), guess)
                if view.state != "RUNNING":  # once running again, the run writes its own status
                    mark_interrupted(run_dir, guess)
            if job_id in unexplained:
                seen_at, guess = unexplained[job_id]
                run = ended_run(job_id, view.restarts)
                if run or time.monotonic() - seen_at > sacct_lag_s:
                    del unexplained[job_id]
                    why = requeue_line(job_id, view.restarts, *run) if run else guess
                    log.warning(why)
                    if view.state != "RUNNING":
                        mark_interrupted(run_dir, why, replacing=guess)
            last[job_id] = view
        if all(job_id not in views or views[job_id].ended for job_id in job_ids):
            return last
        time.sleep(poll_s)


def lost_line(job_id: str, view: JobView | None) -> str | None:
    """One line for a job that lost its node and was not requeued; None for any other end."""
    state, nodes = (view.state, view.nodes) if view else ("", "")
    if state != "NODE_FAIL":  # slurmctld has forgotten the job: sacct's record of its last run
        state, nodes = (sacct_runs(job_id) or [("", "")])[-1]
    if state != "NODE_FAIL":
        return None
    return (f"job {job_id} lost its node {nodes} (NODE_FAIL) and was not requeued: submit it with "
            f"hydra.launcher.additional_parameters.requeue=true, or run the same command again to resume it")

"""Run a command in a fresh process and measure it the way FLARE measures a submission.

FLARE scores efficiency per case: one fresh container per case, wall time from start until the
output is written, memory sampled every 0.1 s and reported both as the peak and as the area
under the memory-time curve. :func:`run_monitored` gives CPU users the same measurement for any
command line: it starts the command in its own session (so the whole process tree can be killed),
samples the resident memory and CPU use of the *whole tree* (the command and every descendant)
every ``interval_s`` seconds with psutil, enforces a time limit and an optional memory limit,
and keeps the tail of stderr of a command that fails.

Two figures come from the kernel rather than from sampling, because the kernel sees every
instant: total CPU time (user + system of the command and its waited-for descendants, from
``wait4``) and the command's own peak resident set (``ru_maxrss``). The sampled peak can miss a
spike shorter than the interval; the kernel peak cannot, but covers one process only. On Linux
the kernel peak also inherits the *launching* process's own high-water mark (the memory counter
is carried across ``fork`` and ``exec``), so it is only a faithful per-command figure when the
launcher is small, as ``edgeseg benchmark`` is; inside a large process (a test runner that has
grown to a gigabyte) it reads at least that process's peak.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

#: FLARE's memory sampling interval (seconds).
DEFAULT_INTERVAL_S = 0.1

#: How much of a failed command's stderr is kept (characters).
STDERR_TAIL_CHARS = 2000

MB = 1024.0 * 1024.0

#: Outcome of one monitored run.
STATUS_OK = "ok"
STATUS_FAILED = "failed"  # non-zero exit status (crash, error message)
STATUS_TIMEOUT = "timeout"  # killed by us after the time limit
STATUS_MEMORY_LIMIT = "memory_limit"  # killed by us after exceeding the memory limit
STATUS_OOM = "oom"  # died of memory exhaustion on its own (kernel OOM killer or MemoryError)
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_TIMEOUT, STATUS_MEMORY_LIMIT, STATUS_OOM)


@dataclass
class Sample:
    """One sample of a process tree.

    Attributes
    ----------
    t_s : float
        Seconds since the command was started.
    rss_mb : float
        Sum of the resident set sizes of all live processes of the tree, in MiB.
    cpu_percent : float
        CPU use of the tree since the previous sample (100 = one core fully busy).
    processes : int
        Number of live processes in the tree.
    """

    t_s: float
    rss_mb: float
    cpu_percent: float
    processes: int


@dataclass
class RunResult:
    """Measurement of one monitored command.

    ``time_s`` runs from just before the process was started until the kernel reported its
    exit, so it includes interpreter start-up and model loading as FLARE's container time does.
    """

    argv: list[str]
    status: str
    exit_code: int | None
    time_s: float
    samples: list[Sample]
    cpu_time_s: float
    kernel_max_rss_mb: float
    stderr_tail: str = ""
    stdout_tail: str = ""
    limit_hit: str = ""

    @property
    def peak_rss_mb(self) -> float:
        """Largest sampled resident memory of the whole tree (MiB)."""
        return max((s.rss_mb for s in self.samples), default=0.0)

    @property
    def memory_auc_mb_s(self) -> float:
        """Area under the sampled memory-time curve (MiB x s)."""
        return memory_auc_mb_s([s.t_s for s in self.samples], [s.rss_mb for s in self.samples])

    @property
    def mean_cpu_percent(self) -> float:
        """Kernel-measured CPU time over wall time (100 = one core busy all the time)."""
        return 100.0 * self.cpu_time_s / self.time_s if self.time_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


@dataclass
class _TreeState:
    """Per-process CPU times seen at the previous sample, to turn totals into rates."""

    cpu_s: dict[int, float] = field(default_factory=dict)
    t_s: float = 0.0


def memory_auc_mb_s(times_s: Sequence[float], rss_mb: Sequence[float]) -> float:
    """Area under a memory-time curve by the trapezoid rule.

    Parameters
    ----------
    times_s : sequence of float
        Sample times in seconds, increasing.
    rss_mb : sequence of float
        Memory at those times in MiB.

    Returns
    -------
    float
        The integral in MiB x s (0 for fewer than two samples).
    """
    if len(times_s) < 2:
        return 0.0
    t = np.asarray(times_s, dtype=float)
    m = np.asarray(rss_mb, dtype=float)
    return float(np.sum((m[1:] + m[:-1]) * np.diff(t)) / 2.0)


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and all its live descendants (processes that vanish meanwhile are skipped)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def sample_tree(root: psutil.Process, state: _TreeState, t_s: float) -> Sample:
    """Measure the resident memory and CPU rate of ``root``'s process tree now.

    Processes can exit between listing and reading them; those are skipped, so a sample never
    fails because the tree changed under it.
    """
    rss = 0
    cpu_now: dict[int, float] = {}
    for proc in process_tree(root):
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
        except psutil.Error:
            continue
        cpu_now[proc.pid] = times.user + times.system
    # CPU used since the previous sample by processes seen both times; a process seen for the
    # first time counts from zero (it started after the previous sample, or is the first one).
    used = sum(c - state.cpu_s.get(pid, 0.0) for pid, c in cpu_now.items())
    dt = t_s - state.t_s
    percent = 100.0 * max(used, 0.0) / dt if dt > 0 else 0.0
    state.cpu_s, state.t_s = cpu_now, t_s
    return Sample(t_s=t_s, rss_mb=rss / MB, cpu_percent=percent, processes=len(cpu_now))


def kill_tree(root_pid: int) -> None:
    """SIGKILL a command's whole process tree: its session's process group and any descendant
    that left it (a grandchild that called ``setsid``)."""
    try:
        descendants = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    # The command leads its own session and process group, so its id is the group's id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root_pid, signal.SIGKILL)
    for proc in descendants:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _tail(path: Path, chars: int = STDERR_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - chars, 0))
            return handle.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def _classify(exit_code: int, limit_hit: str, stderr_tail: str) -> str:
    if limit_hit:
        return limit_hit
    if exit_code == 0:
        return STATUS_OK
    # SIGKILL that we did not send is, on Linux, almost always the kernel OOM killer.
    if exit_code == -signal.SIGKILL or "MemoryError" in stderr_tail:
        return STATUS_OOM
    return STATUS_FAILED


def run_monitored(
    argv: Sequence[str],
    *,
    time_limit_s: float | None = None,
    memory_limit_mb: float | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    sample: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Run ``argv`` in a fresh process and measure its time, memory and CPU use.

    Parameters
    ----------
    argv : sequence of str
        The command line (no shell).
    time_limit_s : float, optional
        Kill the whole process tree once this much wall time has passed; status ``timeout``.
    memory_limit_mb : float, optional
        Kill the tree once a sample sees more resident memory than this; status
        ``memory_limit``.
    interval_s : float
        Sampling interval (FLARE: 0.1 s).
    sample : bool
        ``False`` only waits for the command (no psutil sampling, no limits but the time
        limit); used to measure what sampling itself costs.
    env, cwd
        Passed to :class:`subprocess.Popen`.

    Returns
    -------
    RunResult
        Always returns, whatever the command does; a command that cannot be started at all
        raises :class:`OSError` from Popen.
    """
    if interval_s <= 0:
        raise ValueError(f"sampling interval must be positive, got {interval_s}")
    if time_limit_s is not None and time_limit_s <= 0:
        raise ValueError(f"time limit must be positive, got {time_limit_s}")
    with tempfile.TemporaryDirectory(prefix="edgeseg-run-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            exited = threading.Event()
            wait_status: dict[str, object] = {}
            start = time.perf_counter()
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            )

            def _reap() -> None:
                # wait4 rather than Popen.wait: it also returns the kernel's resource usage.
                _, status, usage = os.wait4(proc.pid, 0)
                wait_status["end"] = time.perf_counter()
                wait_status["status"], wait_status["usage"] = status, usage
                exited.set()

            reaper = threading.Thread(target=_reap, daemon=True)
            reaper.start()
            try:
                samples, limit_hit = _watch(
                    proc.pid, start, exited, time_limit_s, memory_limit_mb, interval_s, sample
                )
            except BaseException:
                # Ctrl-C or an error here: the command runs in its own session and would
                # not get the terminal's SIGINT, so end it rather than leave it running.
                kill_tree(proc.pid)
                reaper.join()
                raise
            reaper.join()
            # Anything the command left running in its session (a stray daemon grandchild)
            # would skew the next measurement: end it too.
            kill_tree(proc.pid)
        end = float(wait_status["end"])  # type: ignore[arg-type]
        exit_code = os.waitstatus_to_exitcode(int(wait_status["status"]))  # type: ignore[arg-type]
        proc.returncode = exit_code  # reaped above; tell Popen so it does not wait again
        usage = wait_status["usage"]
        stderr_tail, stdout_tail = _tail(err_path), _tail(out_path, 500)
    time_s = end - start
    if samples:
        # Close the curve at the exit time with the last level seen, so the AUC covers the run.
        last = samples[-1]
        if time_s > last.t_s:
            samples.append(Sample(time_s, last.rss_mb, 0.0, 0))
    return RunResult(
        argv=list(argv),
        status=_classify(exit_code, limit_hit, stderr_tail),
        exit_code=exit_code,
        time_s=time_s,
        samples=samples,
        cpu_time_s=float(usage.ru_utime + usage.ru_stime),  # type: ignore[attr-defined]
        kernel_max_rss_mb=float(usage.ru_maxrss) / 1024.0,  # type: ignore[attr-defined]  # KiB
        stderr_tail=stderr_tail,
        stdout_tail=stdout_tail,
        limit_hit=limit_hit,
    )


def _watch(
    pid: int,
    start: float,
    exited: threading.Event,
    time_limit_s: float | None,
    memory_limit_mb: float | None,
    interval_s: float,
    sample: bool,
) -> tuple[list[Sample], str]:
    """Sample the tree on a fixed grid until the command exits or breaks a limit."""
    samples: list[Sample] = []
    limit_hit = ""
    state = _TreeState()
    try:
        root = psutil.Process(pid)
    except psutil.Error:  # already gone
        return samples, limit_hit
    deadline = start + time_limit_s if time_limit_s is not None else None
    tick = 0
    while not exited.is_set():
        now = time.perf_counter()
        if sample:
            current = sample_tree(root, state, now - start)
            if current.processes:
                samples.append(current)
                if memory_limit_mb is not None and current.rss_mb > memory_limit_mb:
                    limit_hit = STATUS_MEMORY_LIMIT
                    kill_tree(pid)
                    break
        if deadline is not None and now >= deadline:
            limit_hit = STATUS_TIMEOUT
            kill_tree(pid)
            break
        # Sleep to the next grid point (not interval_s after this sample, so the sampling cost
        # does not stretch the interval), but wake at once when the command exits.
        tick += 1
        next_at = start + tick * interval_s
        if deadline is not None:
            next_at = min(next_at, deadline)
        exited.wait(max(next_at - time.perf_counter(), 0.0))
    return samples, limit_hit

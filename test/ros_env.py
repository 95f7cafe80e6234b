"""Shared setup for tests that run ROS 2 (rclpy) in the test process and in subprocesses.

    env = ros_env(tmp_path)                         # environment for this test's ROS processes
    proc = start_ros_process([sys.executable, "-m", "clustvit_ros.segment_node"], env)
    with rclpy_context(env) as ctx:                 # rclpy in the test process, own Context
        node = rclpy.create_node("observer", context=ctx)
        executor = SingleThreadedExecutor(context=ctx); executor.add_node(node)
        assert wait_for(lambda: node.count_publishers("/stats") > 0, executor)
    stop_ros_process(proc)                          # SIGINT, then wait: no /dev/shm leftovers

Everything stays on this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) in a random ROS_DOMAIN_ID,
logs go to the test's temporary folder, and Fast DDS uses the package's shared-memory profile
(config/fastdds_shm.xml), which delivers full-size images over best-effort QoS.

Importing this module needs no ROS; rclpy is imported only inside rclpy_context().
Fast DDS reads FASTDDS_DEFAULT_PROFILES_FILE once per process (at the first participant), so all
tests in one pytest process should use the same profile, as ros_env() does.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
FASTDDS_PROFILE = REPO / "config" / "fastdds_shm.xml"
MATCH_TIMEOUT_S = 10.0  # discovery sometimes takes ~2.6 s; tests wait for matching, never sleep

# The variables ros_env() sets; rclpy_context() applies them to the test process.
ROS_VARS = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR", "FASTDDS_DEFAULT_PROFILES_FILE",
            "RMW_IMPLEMENTATION", "ROS_LOCALHOST_ONLY", "PYTHONPATH", "PYTHONUNBUFFERED")


def random_domain_id() -> int:
    """A ROS_DOMAIN_ID in 1..101 (the range safe for Fast DDS ports on Linux), random per call."""
    return random.SystemRandom().randint(1, 101)


def ros_env(log_dir: str | os.PathLike, domain_id: int | None = None,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for this test's ROS processes: a copy of `base` (default os.environ) with
    localhost-only discovery, ROS_DOMAIN_ID `domain_id` (random if None), ROS_LOG_DIR `log_dir`,
    the Fast DDS shared-memory profile, and the repository root first on PYTHONPATH (so that
    subprocesses import the source tree's clustvit_ros / clustvit_core, as pytest.ini does)."""
    env = dict(os.environ if base is None else base)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env.pop("ROS_LOCALHOST_ONLY", None)  # ignored by Kilted; the variable below replaces it
    env.update(
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=str(random_domain_id() if domain_id is None else domain_id),
        ROS_LOG_DIR=str(log_dir),
        FASTDDS_DEFAULT_PROFILES_FILE=str(FASTDDS_PROFILE),
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        PYTHONUNBUFFERED="1",
    )
    paths = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@contextlib.contextmanager
def patched_environ(env: Mapping[str, str], keys: Sequence[str] = ROS_VARS) -> Iterator[None]:
    """Set `keys` of os.environ as in `env` (removing those `env` lacks); restore them on exit."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            if k in env:
                os.environ[k] = env[k]
            else:
                os.environ.pop(k, None)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def rclpy_context(env: Mapping[str, str]):
    """rclpy initialized in this process with its own Context, in `env`'s domain and environment;
    shut down on exit (also after a failure). Yields the Context: pass it to create_node(context=)
    and to the executor. rclpy's signal handlers are not installed (Ctrl-C stays pytest's)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    with patched_environ(env):
        context = Context()
        rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]),
                   signal_handler_options=SignalHandlerOptions.NO)
        try:
            yield context
        finally:
            context.try_shutdown()


def wait_for(predicate: Callable[[], bool], executor=None, timeout: float = MATCH_TIMEOUT_S,
             period: float = 0.05) -> bool:
    """Spin `executor` (if given) until `predicate()` is true or `timeout` seconds have passed;
    returns the last value of the predicate."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        if executor is not None:
            executor.spin_once(timeout_sec=period)
        else:
            time.sleep(period)


def start_ros_process(cmd: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike = REPO,
                      **popen_kwargs) -> subprocess.Popen:
    """Start a ROS process (a node or a script) with `env`; stdout and stderr are merged into
    proc.stdout (text) unless given otherwise. Stop it with stop_ros_process()."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(list(cmd), env=dict(env), cwd=str(cwd), text=True, **popen_kwargs)


def stop_ros_process(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str]:
    """SIGINT (a clean rclpy shutdown, no Fast DDS leftovers in /dev/shm), then wait; SIGKILL only
    if it does not exit within `timeout` s. Returns (exit code, its output if it was piped)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out or ""

"""nightlab.toml: typed schema (unknown keys rejected), loading, and one-line errors."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from nightlab.config_file import CONFIG_NAME as CONFIG_NAME  # re-exported: its home is config_file.py
from nightlab.config_file import find_config
from nightlab.errors import UsageError
from nightlab.plugins import EXECUTORS, SANDBOXES, is_path
from nightlab.types import Metric


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def plugin_name(value: str, known: list[str], role: str) -> str:
    """A plug-in setting: one of the `known` short names, or a `module:Class` path (imported when used)."""
    if value in known or is_path(value):
        return value
    # a custom error type: its message is shown as it is, without pydantic's "Value error, " before it
    raise PydanticCustomError("plugin", f"unknown {role} {value!r} (known: {', '.join(known)}; or module:Class)")


class ProjectConfig(Section):
    editable: list[str] = ["train.py"]
    protected: list[str] = ["prepare.py"]
    program: str = "program.md"
    scratchpad: str = "scratchpad.md"

    @field_validator("editable", "scratchpad")
    @classmethod
    def _project_relative(cls, v: list[str] | str) -> list[str] | str:
        """Normalized, so `./train.py` matches the `train.py` git reports as changed."""
        def norm(p: str) -> str:
            if not p or Path(p).is_absolute():
                raise ValueError(f"{p!r} must be a path relative to the project directory")
            return Path(os.path.normpath(p)).as_posix()
        return [norm(p) for p in v] if isinstance(v, list) else norm(v)


class RunConfig(Section):
    command: str = "python train.py"
    budget_s: float = Field(300, gt=0)
    timeout_s: float = Field(600, gt=0)
    prepare: str = ""
    env: list[str] = []  # names of caller variables passed through to runs (never API keys)
    grace_s: float = Field(5, ge=0)

    @model_validator(mode="after")
    def _timeout_covers_budget(self) -> RunConfig:
        if self.timeout_s <= self.budget_s:
            raise ValueError(f"timeout_s ({self.timeout_s:g}) must be longer than budget_s ({self.budget_s:g})")
        return self


class Constraint(Section):
    name: str
    max: float | None = None
    min: float | None = None


class MetricConfig(Section):
    name: str = "val_bpb"
    goal: Literal["minimize", "maximize"] = "minimize"
    evaluate: str = ""
    test_command: str = ""  # run by `nightlab verify --test` after training, with NIGHTLAB_SPLIT=test
    constraints: list[Constraint] = []


class KeepConfig(Section):
    # 5 runs and 2 confirmations: with 3 and 1 the benchmarks kept 6.5% of no-op changes and only 76%
    # of real 3-sigma wins (benchmarks/false_keeps.py, benchmarks/power.py).
    noise_runs: int = Field(5, ge=1)
    threshold: Literal["auto"] | float = "auto"
    confirm: int = Field(2, ge=0)
    sigmas: float = Field(2.0, ge=0)  # auto threshold = sigmas x the standard error of the gain


class DataConfig(Section):
    train: list[str] = []
    val: list[str] = []
    test: list[str] = []
    select: list[str] = []  # the selection split: never seen by a trial or the agent; scored by `verify --select`

    def hidden(self) -> list[str]:
        """The splits no trial may see: test and select."""
        return [*self.test, *self.select]


class SandboxConfig(Section):
    backend: str = "auto"  # auto, bwrap, docker, podman, process, or module:Class
    memory_gb: float = Field(24, gt=0)
    gpus: str = "all"
    max_pids: int = Field(4096, ge=0)  # processes and threads of one run (0 = no limit)
    max_log_mb: float = Field(50, ge=0)  # run.log keeps its start and its end past this (0 = no cap)
    max_run_dir_mb: float = Field(10240, ge=0)  # a run writing more is stopped (0 = no cap)
    image: str = ""  # docker/podman: the image holding the project's Python environment
    runtime: str = ""  # docker/podman: the OCI runtime (crun, runc, ...); "" = the first that works here

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        return plugin_name(v, ["auto", *SANDBOXES], "sandbox")


class SearchParam(Section):
    """A search-space override for one UPPER_CASE constant (optuna agent)."""

    low: float | None = None
    high: float | None = None
    log: bool | None = None
    choices: list[float | int | str | bool] | None = None


class Price(Section):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(None, ge=0)  # default: 0.1 x input
    cache_write: float | None = Field(None, ge=0)  # default: 1.25 x input


class AgentConfig(Section):
    name: str = "optuna"
    model: str = ""
    base_url: str = ""
    max_cost_usd: float = Field(0, ge=0)
    seed: int = 0
    max_failures: int = Field(5, ge=1)  # agent failures in a row that stop the run
    queue: str = "ideas.toml"  # scripted agent: the file of queued edits
    search: dict[str, SearchParam] = {}  # optuna agent: per-constant ranges or choices
    # optuna agent: at most `knobs` constants move per trial, each by at most `step` of its (log) range around the
    # trial's starting state (0: every constant, anywhere in its range); TPE samples at random for its first
    # `startup_trials` results. The defaults stay the older global search: small moves make keeps attributable
    # (the quickstart turns them on), but a study did not show them finding more per compute-hour (README: Search).
    knobs: int = Field(0, ge=0)
    step: float = Field(0.25, gt=0, le=1)
    startup_trials: int = Field(10, ge=0)
    # LLM agents (anthropic, openai, claude-code, codex): per-trial caps, retries, prices
    max_turns: int = Field(30, ge=1)  # model turns per trial
    max_tokens: int = Field(400_000, ge=1)  # input + output tokens per trial
    reply_tokens: int = Field(8192, ge=1)  # output tokens per model reply
    max_retries: int = Field(4, ge=0)  # on rate limits, 5xx and lost connections, with exponential backoff
    timeout_s: float = Field(900, gt=0)  # one trial's whole proposal: every request and retry (CLI: the process)
    # API agents' sampling; unset: the server's default
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # anthropic, and OpenAI-compatible local servers (not OpenAI itself)
    prices: dict[str, Price] = {}  # model (or model prefix) → $/Mtok, over the built-in table
    continue_session: bool = False  # claude-code: continue one session across trials
    command: str = ""  # claude-code / codex: the CLI to run (default: the one `make test` installs, else PATH)
    # claude-code / codex: the bwrap agent profile (auto: if it works)
    sandbox: Literal["auto", "bwrap", "none"] = "auto"


class PhasesConfig(Section):
    trials: int = Field(0, ge=0)
    plateau: int = Field(0, ge=0)
    allow_web: list[int] = []


class SlurmConfig(Section):
    """[executor.slurm]: how each run becomes one Slurm job (GPUs: [executor] gpus_per_trial)."""

    partition: str = ""  # empty: the cluster's default partition
    account: str = ""
    qos: str = ""
    time_limit_min: int = Field(0, ge=0)  # 0: the run's timeout (twice with an evaluator) plus 10 minutes
    cpus: int = Field(1, ge=1)  # per run
    memory_gb: float = Field(0, ge=0)  # per run; 0: the partition's default
    sbatch: list[str] = []  # extra #SBATCH options, e.g. ["--constraint=h100"]
    setup: str = ""  # a shell line run in the job first: module loads, a venv's activation
    python: str = ""  # the interpreter on compute nodes; empty: the one nightlab runs under (a shared path)
    poll_s: float = Field(5, gt=0)  # how often squeue is asked; finished runs are noticed sooner, by their files


class SshHost(Section):
    host: str  # a name ssh knows (~/.ssh/config applies), or user@address
    port: int = Field(22, ge=1, le=65535)
    slots: int = Field(1, ge=1)  # runs at once on this host
    gpus: list[str] = []  # its GPU indices, handed out [executor] gpus_per_trial to each of its slots
    python: str = "python3"  # an interpreter there with nightlab installed


class SshConfig(Section):
    """[executor.ssh]: hosts that run trials over SSH, nightlab installed on each."""

    hosts: list[SshHost] = []
    identity_file: str = ""  # the key to log in with; empty: ssh's own choice (its agent, ~/.ssh/id_*)
    known_hosts: str = ""  # the hosts' keys; empty: ~/.ssh/known_hosts. An unknown or changed key is refused.
    workdir: str = ".cache/nightlab-ssh"  # on each host, under its home: the project's files, synced


class ExecutorConfig(Section):
    name: str = "local"  # local, ray, slurm, ssh, or module:Class
    slots: int = Field(1, ge=1)  # runs at once; each slot gets its own gpus_per_trial GPUs
    gpus_per_trial: int = Field(0, ge=0)  # 0: every run sees [sandbox] gpus
    pipeline: bool = False  # the agent prepares the next trial while the slots train
    ray_address: str = ""  # empty: start a local Ray cluster
    slurm: SlurmConfig = SlurmConfig()
    ssh: SshConfig = SshConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return plugin_name(v, list(EXECUTORS), "executor")


class SearchConfig(Section):
    # Where a trial starts: "greedy" from the best (the ratchet), or "frontier": also from a near-miss statistically
    # tied with the best (frontier.py)
    policy: Literal["greedy", "frontier"] = "greedy"
    # A proposal first runs once at this budget and is discarded there when clearly worse than the best at that
    # budget (screening.py); 0: off
    screen_budget_s: float = Field(0, ge=0)
    screen_sigmas: float = Field(2.0, ge=0)  # "clearly worse": by more than this many standard errors


class ReportConfig(Section):
    html: bool = True  # regenerate report.html and progress.png after each trial of `nightlab run`
    mlflow: bool = False  # one MLflow run per trial (needs the `mlflow` extra)
    mlflow_uri: str = ""  # tracking URI; default MLFLOW_TRACKING_URI, else .nightlab/<tag>/mlflow.db (SQLite)
    mlflow_experiment: str = ""  # default "nightlab/<tag>"


class AuditConfig(Section):
    enabled: bool = True  # audit every judged trial's change against its parent (audit.py)
    on_suspicious: Literal["warn", "hold"] = "warn"  # hold: a flagged win waits for `nightlab accept/reject N`
    inspector: Literal["", "anthropic", "openai"] = ""  # a model also reads each win's diff (inspector.py)
    inspector_model: str = ""  # default: [agent] model when the agent is the same provider, else the provider's
    inspector_base_url: str = ""  # default: [agent] base_url when the agent is the same provider, else the SDK's


class Config(Section):
    project: ProjectConfig = ProjectConfig()
    run: RunConfig = RunConfig()
    metric: MetricConfig = MetricConfig()
    keep: KeepConfig = KeepConfig()
    data: DataConfig = DataConfig()
    sandbox: SandboxConfig = SandboxConfig()
    agent: AgentConfig = AgentConfig()
    phases: PhasesConfig = PhasesConfig()
    executor: ExecutorConfig = ExecutorConfig()
    search: SearchConfig = SearchConfig()
    report: ReportConfig = ReportConfig()
    audit: AuditConfig = AuditConfig()

    # Set by load(); not part of the file.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: object) -> object:
        return Path(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _screen_is_shorter(self) -> Config:
        if self.search.screen_budget_s >= self.run.budget_s:
            raise PydanticCustomError("screen", f"search.screen_budget_s ({self.search.screen_budget_s:g}) must be "
                                      f"shorter than run.budget_s ({self.run.budget_s:g})")
        return self

    @property
    def root(self) -> Path:
        """The project directory: where nightlab.toml lives."""
        return self.path.parent if self.path else Path.cwd()

    @property
    def primary(self) -> Metric:
        return Metric(self.metric.name, self.metric.goal)


# [agent] keys that say how the agent is reached and sampled, not what a trial measures: they may change without a
# commit (between sessions of a tag, or for a new tag), since every trial records the agent that proposed it.
ENDPOINT_KEYS = ("model", "base_url", "temperature", "top_p", "top_k", "timeout_s", "max_retries", "reply_tokens")


def same_but_endpoint(a: str, b: str) -> bool:
    """Whether two nightlab.toml texts differ at most in the ENDPOINT_KEYS of [agent]."""
    try:
        tables = [tomllib.loads(a), tomllib.loads(b)]
    except tomllib.TOMLDecodeError:
        return False
    for t in tables:
        agent = t.get("agent")
        if isinstance(agent, dict):
            for key in ENDPOINT_KEYS:
                agent.pop(key, None)
            if not agent:
                del t["agent"]
    return tables[0] == tables[1]


def load(path: Path | None = None) -> Config:
    path = (path or find_config()).resolve()
    if not path.is_file():
        raise UsageError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise UsageError(f"{path}: {describe(e)}") from None
    cfg.path = path
    return cfg


def describe(e: ValidationError) -> str:
    """The first validation problem as 'key: what is wrong' (one line)."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal[", "float", "function-")))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{key or 'config'}: {msg}{more}"


def override(cfg: Config, key: str, value: object, flag: str) -> None:
    """Apply a CLI flag to the config key it mirrors, e.g. ('run.budget_s', 60, '--budget')."""
    section, name = key.split(".")
    try:
        setattr(getattr(cfg, section), name, value)
    except ValidationError as e:
        raise UsageError(f"{flag}: {e.errors()[0]['msg']} (config key {key})") from None

"""`gridlab-agent`: the machine daemon's command line.

Settings come from defaults, then the TOML file, then GRIDLAB_AGENT_* variables, then
flags. Exit status: 0 after a clean stop, 2 for a usage or configuration error
(including a missing token), 3 when the scheduler refuses the token.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from gridlab import __version__
from gridlab.agent.daemon import Agent
from gridlab.agent.inventory import InventoryCollector
from gridlab.agent.reaper import become_subreaper, kill_leftovers
from gridlab.agent.spotwatch import notice_url
from gridlab.common import auth, logs
from gridlab.common.config import AgentConfig, ConfigError, load

EXIT_USAGE = 2
ENV_PREFIX = "GRIDLAB_AGENT_"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gridlab-agent",
        description="Run this machine's GPUs for a gridlab scheduler.",
        epilog="Every flag also has a config-file key and a GRIDLAB_AGENT_<KEY> variable; "
        "the join token may come from GRIDLAB_AGENT_TOKEN.",
    )
    p.add_argument("--config", metavar="F", help="TOML config file")
    p.add_argument("--scheduler", metavar="HOST:PORT", help="scheduler address")
    p.add_argument("--token-file", metavar="F", help="file holding the agent's join token")
    p.add_argument("--tls-ca", metavar="F", help="PEM CA bundle that signed the scheduler's certificate (turns TLS on)")
    p.add_argument("--tls-cert", metavar="F", help="PEM client certificate naming this agent (mTLS)")
    p.add_argument("--tls-key", metavar="F", help="PEM private key of --tls-cert")
    p.add_argument("--name", metavar="N", help="this agent's unique name (default: hostname)")
    p.add_argument("--pool", metavar="P", help="pool to join (default: onprem)")
    p.add_argument("--state-dir", metavar="D", help="where attempts' files live")
    p.add_argument(
        "--label",
        metavar="K=V",
        action="append",
        type=_label,
        default=[],
        help="agent label runs can select on (repeatable; added to the config's labels)",
    )
    p.add_argument("--grace-period", metavar="S", type=float, help="SIGTERM to SIGKILL, in seconds")
    p.add_argument("--address", metavar="HOST", help="how peer nodes reach this machine")
    p.add_argument(
        "--preemptible",
        action="store_const",
        const=True,
        help="a spot machine: attempts stopped by SIGTERM or a reclaim notice are reported as interruptions",
    )
    p.add_argument("--spot-notice-url", metavar="URL", help="poll for a reclaim notice: 'ec2' or a URL (default: off)")
    p.add_argument("--log-format", choices=("auto", "json", "console"))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--version", action="version", version=f"gridlab-agent {__version__}")
    return p


def load_config(args: argparse.Namespace) -> tuple[AgentConfig, str]:
    """The effective config and the token. Raises ConfigError with what to fix."""
    config = load(
        AgentConfig,
        config_file=args.config,
        env_prefix=ENV_PREFIX,
        overrides={
            "scheduler": args.scheduler,
            "token_file": args.token_file,
            "tls_ca": args.tls_ca,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "name": args.name,
            "pool": args.pool,
            "state_dir": args.state_dir,
            "grace_period": args.grace_period,
            "address": args.address,
            "preemptible": args.preemptible,
            "spot_notice_url": args.spot_notice_url,
            "log_format": args.log_format,
            "log_level": args.log_level,
        },
    )
    config.labels = {**config.labels, **dict(args.label)}
    if config.token_file:
        try:
            token = auth.read_secret(config.token_file)
        except OSError as exc:
            raise ConfigError(f"cannot read token file {config.token_file}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    else:
        token = config.token.strip()
    if not token:
        raise ConfigError(
            f"no join token: pass --token-file F, set token_file or token in the config file, or set {ENV_PREFIX}TOKEN"
        )
    if config.grace_period < 0:
        raise ConfigError(f"grace_period must be >= 0, got {config.grace_period}")
    if not config.name:
        raise ConfigError("name must not be empty")
    try:
        notice_url(config.spot_notice_url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.spot_poll <= 0:
        raise ConfigError(f"spot_poll must be > 0 seconds, got {config.spot_poll}")
    return config, token


async def serve(agent: Agent) -> int:
    """Run `agent` with SIGTERM and SIGINT mapped to a clean stop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        code: int = await agent.run()
        return code
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, token = load_config(args)
        logs.configure(config.log_format, config.log_level)
        structlog.contextvars.bind_contextvars(agent=config.name)
        inventory = InventoryCollector(agent_name=config.name, state_dir=config.state_dir, address=config.address)
        agent = Agent(config, token, inventory=inventory)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"gridlab-agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Orphans of the ranks re-parent to the agent, which kills and reaps them (reaper.py).
    become_subreaper()
    kill_leftovers(Path(config.state_dir).expanduser())
    return asyncio.run(serve(agent))


if __name__ == "__main__":
    sys.exit(main())

"""`pcloud` command line: each command parses, calls one API method, formats the result.

The contract (names, flags, `--json` fields) is ../shared/CLI.md. Human output
by default; `--json` prints exactly one JSON document on stdout. Errors are one
line on stderr and a non-zero exit (a traceback only with `-v`).
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click
from rich.console import Console
from rich.table import Table

from . import errors
from .records import Entry

if TYPE_CHECKING:
    from .vault import Vault

EXIT_ERROR = 1
EXIT_USAGE = 2

_LOWER_ERRORS = (errors.TransportError, errors.ConsensusError, errors.ReplicationError)


class Ctx:
    """Options every command accepts, merged from the group and the command."""

    def __init__(self) -> None:
        self.vault_dir: Path | None = None
        self.json = False
        self.verbose = False
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)
        self.opened: list[Vault] = []

    @property
    def vault_path(self) -> Path:
        from .vault import default_vault_dir  # pcloud.vault loads lazily: --help and usage errors skip ~0.15 s
        return self.vault_dir if self.vault_dir is not None else default_vault_dir()

    def open(self) -> Vault:
        from .vault import Vault
        vault = Vault.open(self.vault_path)
        self.opened.append(vault)
        return vault

    def tell_diverted(self) -> None:
        """Say when a write landed on the local branch because the node had no Raft quorum."""
        for vault in self.opened:
            for branch in vault.take_diverted():
                self.err.print(f"[yellow]no Raft majority reachable: the commit is kept on branch {branch}; "
                               f"the node merges it into main when a majority is back[/]")
        self.opened.clear()

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        if self.json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            human()

    @contextmanager
    def progress(self, what: str, total_bytes: int | None) -> Iterator[Callable[[int, int], None]]:
        """A rich progress bar on stderr (hidden with --json or when stderr is not a terminal)."""
        if self.json or not self.err.is_terminal:
            yield lambda files, nbytes: None
            return
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        cols = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[files]} files")]
        with Progress(*cols, console=self.err, transient=True) as bar:
            task = bar.add_task(what, total=total_bytes, files=0)
            yield lambda files, nbytes: bar.update(task, completed=nbytes, files=files)


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def common(fn: Callable) -> Callable:
    """--vault/--json/-v on every command as well as on the group (either place works)."""

    @click.option("--vault", "vault_dir", type=click.Path(path_type=Path), default=None,
                  help="Vault directory (default: $PCLOUD_VAULT or the platform data dir).")
    @click.option("--json", "as_json", is_flag=True, default=False, help="One JSON document on stdout.")
    @click.option("-v", "--verbose", is_flag=True, default=False, help="Tracebacks and debug logs.")
    @pass_ctx
    @functools.wraps(fn)
    def wrapper(ctx: Ctx, vault_dir: Path | None, as_json: bool, verbose: bool, *a: Any, **kw: Any) -> Any:
        if vault_dir is not None:
            ctx.vault_dir = vault_dir
        ctx.json = ctx.json or as_json
        ctx.verbose = ctx.verbose or verbose
        if ctx.verbose:
            logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            return fn(ctx, *a, **kw)
        finally:
            ctx.tell_diverted()

    return wrapper


class PcloudGroup(click.Group):
    """Turns pcloud errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (errors.PcloudError, *_LOWER_ERRORS) as exc:
            obj = ctx.find_object(Ctx)
            if obj is not None and obj.verbose:
                traceback.print_exc()
            code = EXIT_USAGE if isinstance(exc, errors.UsageError) else EXIT_ERROR
            click.echo(f"pcloud: error: {exc}", err=True)
            ctx.exit(code)
        except OSError as exc:
            obj = ctx.find_object(Ctx)
            if obj is not None and obj.verbose:
                traceback.print_exc()
            click.echo(f"pcloud: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                       err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=PcloudGroup, invoke_without_command=True)
@click.option("--vault", "vault_dir", type=click.Path(path_type=Path), default=None,
              help="Vault directory (default: $PCLOUD_VAULT or the platform data dir).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks and debug logs.")
@click.version_option(package_name="pcloud")
@click.pass_context
def cli(cctx: click.Context, vault_dir: Path | None, as_json: bool, verbose: bool) -> None:
    """pcloud: a personal cloud on your own devices.

    With no command, opens the terminal app.
    """
    ctx = cctx.ensure_object(Ctx)
    ctx.vault_dir, ctx.json, ctx.verbose = vault_dir, as_json, verbose
    if cctx.invoked_subcommand is None:
        from tui.app import make_app        # imported here: textual is only needed for the app
        from tui.model import require_vault
        require_vault(ctx.vault_path)       # a clear error on the terminal, not an empty app
        make_app(ctx.vault_path).run()


# --------------------------------------------------------------------- vault
@cli.command()
@click.option("--name", help="This device's name (default: the host name).")
@common
def init(ctx: Ctx, name: str | None) -> None:
    """Create a new vault with this device as its owner."""
    from .vault import Vault
    with Vault.create(ctx.vault_path, name=name) as v:
        data = {"device_id": v.device_id, "vault_id": v.vault_id, "name": v.device_name, "path": str(v.path)}
    ctx.emit(data, lambda: ctx.out.print(
        f"Created vault {data['vault_id']} in {data['path']}\nThis device: {data['name']} ({data['device_id']}), owner"))


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("vaultpath", required=False, default="")
@click.option("-m", "--message", help="Commit message.")
@common
def put(ctx: Ctx, src: Path, vaultpath: str, message: str | None) -> None:
    """Put a file or folder into the vault (one commit)."""
    total = _local_size(src)
    with ctx.open() as v, ctx.progress(f"put {src.name}", total) as progress:
        res = v.import_path(src, vaultpath, message=message, progress=progress)
    ctx.emit(res.to_json(), lambda: ctx.out.print(
        f"{res.files} files, {_human(res.bytes)}"
        + (f" ({res.unchanged} unchanged)" if res.unchanged else "")
        + (f" -> commit {res.commit[:12]}" if res.commit else " — nothing changed")))


@cli.command()
@click.argument("vaultpath")
@click.argument("dest", required=False, type=click.Path(path_type=Path), default=Path("."))
@click.option("--ref", help="Branch or commit to read from (default: the current branch).")
@common
def get(ctx: Ctx, vaultpath: str, dest: Path, ref: str | None) -> None:
    """Copy a file or folder out of the vault."""
    with ctx.open() as v:
        total = sum(e.size for e in v.ls(vaultpath, ref=ref, recursive=True) if e.kind == "file") \
            if v.stat(vaultpath, ref=ref).kind == "dir" else v.stat(vaultpath, ref=ref).size
        with ctx.progress(f"get {vaultpath or '/'}", total) as progress:
            res = v.export(vaultpath, dest, ref=ref, progress=progress)
    ctx.emit(res.to_json(), lambda: ctx.out.print(f"{res.files} files, {_human(res.bytes)} -> {dest}"))


@cli.command()
@click.argument("vaultpath", required=False, default="")
@click.option("-r", "--recursive", is_flag=True, help="List everything below.")
@click.option("--ref", help="Branch or commit (default: the current branch).")
@common
def ls(ctx: Ctx, vaultpath: str, recursive: bool, ref: str | None) -> None:
    """List a vault folder."""
    with ctx.open() as v:
        entries = v.ls(vaultpath, ref=ref, recursive=recursive)

    def human() -> None:
        for e in entries:
            ctx.out.print(_ls_line(e))

    ctx.emit([e.to_json() for e in entries], human)


@cli.command()
@click.argument("vaultpath")
@click.option("-m", "--message", help="Commit message.")
@common
def rm(ctx: Ctx, vaultpath: str, message: str | None) -> None:
    """Remove a file, document or folder from the vault."""
    with ctx.open() as v:
        info = v.remove(vaultpath, message=message)
    ctx.emit({"commit": info.commit if info else None},
             lambda: ctx.out.print(f"removed {vaultpath}" + (f" -> commit {info.commit[:12]}" if info else "")))


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("-m", "--message", help="Commit message.")
@common
def mv(ctx: Ctx, src: str, dst: str, message: str | None) -> None:
    """Move or rename inside the vault."""
    with ctx.open() as v:
        info = v.move(src, dst, message=message)
    ctx.emit({"commit": info.commit if info else None},
             lambda: ctx.out.print(f"{src} -> {dst}" + (f" (commit {info.commit[:12]})" if info else "")))


@cli.command()
@click.option("-n", "limit", type=click.IntRange(min=1), default=None, help="At most N commits.")
@click.option("--branch", help="Branch (default: the current branch).")
@common
def log(ctx: Ctx, limit: int | None, branch: str | None) -> None:
    """History of a branch, newest first."""
    with ctx.open() as v:
        commits = v.log(limit, branch=branch)

    def human() -> None:
        for c in commits:
            ctx.out.print(f"[yellow]{c.commit[:12]}[/] {c.time}  {c.device}  {c.message}")

    ctx.emit([c.to_json() for c in commits], human)


@cli.command()
@click.argument("name", required=False)
@click.option("--start", help="Where the new branch starts (branch or commit).")
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME.")
@click.option("--switch", is_flag=True, help="Make NAME the branch writes go to (created if missing).")
@common
def branch(ctx: Ctx, name: str | None, start: str | None, delete: bool, switch: bool) -> None:
    """List branches, or create, delete or switch to one."""
    with ctx.open() as v:
        if name is None:
            branches, current = v.branches(), v.branch
            ctx.emit({"current": current, "branches": branches}, lambda: [
                ctx.out.print(f"{'*' if b == current else ' '} {b:20} {h[:12]}") for b, h in branches.items()])
            return
        if delete:
            v.delete_branch(name)
            ctx.emit({"deleted": name}, lambda: ctx.out.print(f"deleted branch {name}"))
            return
        created = None
        if name not in v.branches():
            created = v.create_branch(name, start)
        elif not switch:
            raise errors.BadArgument(f"branch {name!r} already exists")
        if switch:
            v.switch(name)
        ctx.emit({"branch": name, "created": created is not None, "current": v.branch},
                 lambda: ctx.out.print((f"created branch {name}" if created else f"branch {name}")
                                       + (", now current" if switch else "")))


@cli.command()
@click.argument("source")
@click.option("--into", help="Target branch (default: the current branch).")
@click.option("-m", "--message", help="Merge commit message.")
@common
def merge(ctx: Ctx, source: str, into: str | None, message: str | None) -> None:
    """3-way merge of SOURCE into the current branch (both sides kept on conflict)."""
    with ctx.open() as v:
        res = v.merge(source, into=into, message=message)

    def human() -> None:
        how = "fast-forward" if res.fast_forward else "merged"
        ctx.out.print(f"{how} -> {res.commit[:12]}")
        for c in res.conflicts:
            ctx.out.print(f"  [red]conflict[/] {c.path}: {c.reason}" + (f" (other side kept as {c.copy_path})"
                                                                         if c.copy_path else ""))

    ctx.emit(res.to_json(), human)


@cli.command()
@click.argument("a", required=False)
@click.argument("b", required=False)
@common
def diff(ctx: Ctx, a: str | None, b: str | None) -> None:
    """Changes from A to B (branches or commits); no arguments: the last commit."""
    with ctx.open() as v:
        changes = v.diff(a, b)
    marks = {"added": "[green]A[/]", "removed": "[red]D[/]", "modified": "[yellow]M[/]", "renamed": "[cyan]R[/]"}
    ctx.emit([c.to_json() for c in changes], lambda: [
        ctx.out.print(f"{marks.get(c.kind, c.kind)} " + (f"{c.old_path} -> {c.path}" if c.old_path else c.path))
        for c in changes])


@cli.command()
@click.argument("path")
@click.argument("action", type=click.Choice(["show", "set", "append", "delete"]), default="show")
@click.argument("args", nargs=-1)
@common
def doc(ctx: Ctx, path: str, action: str, args: tuple[str, ...]) -> None:
    """CRDT documents: show, set KEY VALUE (map), append TEXT (text), delete KEY."""
    with ctx.open() as v:
        if action == "show":
            d = v.doc(path, create=False)
            data = d.to_json()
            ctx.emit(data, lambda: ctx.out.print_json(json.dumps(data)))
            return
        d = v.doc(path)
        if action == "set":
            if len(args) != 2:
                raise errors.BadArgument("usage: pcloud doc PATH set KEY VALUE")
            d.map()[args[0]] = args[1]
        elif action == "delete":
            if len(args) != 1:
                raise errors.BadArgument("usage: pcloud doc PATH delete KEY")
            m = d.map()
            if args[0] not in m:
                raise errors.NotFound(f"{path}: no key {args[0]!r}")
            del m[args[0]]
        else:
            if len(args) != 1:
                raise errors.BadArgument("usage: pcloud doc PATH append TEXT")
            d.append_text(args[0])
        info = d.save()
        data = {"commit": info.commit if info else None, "doc": d.to_json()}
    ctx.emit(data, lambda: ctx.out.print(f"{path}: {action} -> commit {data['commit'][:12] if data['commit'] else '-'}"))


@cli.command()
@common
def fsck(ctx: Ctx) -> None:
    """Verify every stored object."""
    with ctx.open() as v:
        res = v.fsck()

    def human() -> None:
        for oid, reason in res.errors:
            ctx.out.print(f"[red]bad[/] {oid}: {reason}")
        ctx.out.print(f"{res.objects} objects checked, {len(res.errors)} errors" + ("" if res.ok else " — NOT OK"))
        if res.missing_content:
            ctx.out.print(f"{res.missing_content} chunks of files not opened here are not on this device "
                          "(on-demand policy: fetched on open)")

    ctx.emit(res.to_json(), human)
    if not res.ok:
        sys.exit(EXIT_ERROR)


@cli.command()
@common
def gc(ctx: Ctx) -> None:
    """Drop objects no branch reaches (on-demand devices: also unpinned content held elsewhere)."""
    with ctx.open() as v:
        res = v.gc()
    ctx.emit(res.to_json(), lambda: ctx.out.print(
        f"removed {res.removed} objects, {res.objects} kept"
        + (f"; evicted {res.evicted} chunks of unpinned files (fetched again on open)" if res.evicted else "")))


@cli.command()
@common
def status(ctx: Ctx) -> None:
    """This device now: identity, branches, peers, Raft and sync state."""
    from .control import node_client
    client = node_client(ctx.vault_path)
    if client is not None:
        try:
            data = client.call("status")
        finally:
            client.close()
        data.pop("ok", None)
        _print_node_status(ctx, data)
        return
    with ctx.open() as v:
        st = v.status()
    data = {"device_id": st.device_id, "device_name": st.device_name, "vault_id": st.vault_id,
            "branch": st.branch, "main": st.main, "branches": st.branches, "node": "not running",
            "peers": [], "raft": {"role": None, "leader": None},
            "sync": {"wanted_objects": 0, "wanted_bytes": 0}}

    def human() -> None:
        t = Table(show_header=False, box=None)
        for k in ("device_name", "device_id", "vault_id", "branch", "main", "node"):
            t.add_row(k.replace("_", " "), str(data[k]))
        ctx.out.print(t)

    ctx.emit(data, human)


def _print_node_status(ctx: Ctx, data: dict[str, Any]) -> None:
    def human() -> None:
        t = Table(show_header=False, box=None)
        raft = data["raft"]
        sync = data["sync"]
        for k, val in [("device", f"{data.get('name')} ({data['device_id']})"), ("node", "running"),
                       ("address", data.get("address")), ("main", data["main"]),
                       ("raft", f"{raft['role']}, leader {raft['leader']}"),
                       ("sync", f"{sync['wanted_objects']} objects / {_human(sync['wanted_bytes'])} wanted"),
                       ("local branch", data.get("local_branch") or "-")]:
            t.add_row(k, str(val))
        ctx.out.print(t)
        if data["peers"]:
            pt = Table("peer", "name", "path", "address", "rtt ms", "fetched from")
            per_peer = sync.get("peers", {})
            for p in data["peers"]:
                got = per_peer.get(p["device_id"])
                fetched = f"{got['objects']} objects, {_human(got['bytes'])}" if got else "-"
                pt.add_row(p["device_id"], str(p["name"]), p["path"], str(p["addr"]), str(p["rtt_ms"]), fetched)
            ctx.out.print(pt)
        else:
            ctx.out.print("no peers connected")
        for note in data.get("notices", []):
            ctx.out.print(f"[yellow]{note}[/]")

    ctx.emit(data, human)


def _node_config(listen: str | None, relays: tuple[str, ...], folders: tuple[str, ...], config: Path | None,
                 **extra: Any) -> Any:
    from .node import NodeConfig
    data: dict[str, Any] = {}
    if config is not None:
        try:
            if config.suffix == ".toml":
                import tomllib
                data = tomllib.loads(config.read_text())
            else:
                data = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise errors.BadArgument(f"cannot read node config {config}: {exc}") from exc
        if not isinstance(data, dict):
            raise errors.BadArgument(f"{config}: a node config is a JSON object")
    cfg = NodeConfig.from_json(data)
    if listen:
        cfg.listen = listen
    if relays:
        cfg.relays = list(relays)
    if folders:
        cfg.folders = list(folders)
    for k, v in extra.items():
        if v:
            setattr(cfg, k, v)
    return cfg


def _run_node(ctx: Ctx, cfg: Any, what: str) -> None:
    from .node import run_foreground
    if not ctx.verbose:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("pcloud").setLevel(logging.INFO)
        logging.getLogger("replication").setLevel(logging.INFO)   # failed pulls and refused pushes say why

    def ready(node: Any) -> None:
        st = node.status()
        if ctx.json:
            click.echo(json.dumps({"device_id": st["device_id"], "address": st["address"],
                                   "relay": [f"{h}:{p}" for h, p in node.relay_service.bound]
                                   if node.relay_service else []}), nl=True)
            sys.stdout.flush()
        else:
            ctx.err.print(f"[green]{what} {st['device_id']} running on {st['address']}[/] (SIGTERM or Ctrl-C stops it)")

    run_foreground(ctx.vault_path, cfg, ready)


@cli.command()
@click.option("--listen", help="HOST:PORT of this node's QUIC endpoint (default 127.0.0.1, any port).")
@click.option("--relay", "relays", multiple=True, help="HOST:PORT of a cloud node's relay (repeatable).")
@click.option("--folder", "folders", multiple=True, help="Watch DIR[=VAULTPATH] (repeatable).")
@click.option("--mdns", "mdns", multiple=True,
              help="Interface address(es) for LAN discovery, or 'all' (default: 127.0.0.1 only, so nothing "
                   "multicasts on a real network unless asked).")
@click.option("--config", type=click.Path(path_type=Path),
              help="Node config file (JSON, or TOML if it ends in .toml; pcloud.node.NodeConfig fields).")
@common
def serve(ctx: Ctx, listen: str | None, relays: tuple[str, ...], folders: tuple[str, ...],
          mdns: tuple[str, ...], config: Path | None) -> None:
    """Run this device (foreground; SIGTERM stops it cleanly)."""
    interfaces: list[str] | str | None = ("all" if "all" in mdns else list(mdns)) if mdns else None
    _run_node(ctx, _node_config(listen, relays, folders, config, mdns_interfaces=interfaces), "node")


@cli.command()
@click.option("--listen", "listens", multiple=True, help="HOST:PORT the relay serves on (repeatable).")
@click.option("--quic", help="HOST:PORT of the node's QUIC endpoint (default: first --listen host, any port).")
@click.option("--join", "code", help="Enroll this cloud node with an invitation code (trust storage).")
@click.option("--via", help="With --join: HOST:PORT of the inviter (default: find it on the LAN by mDNS).")
@click.option("--config", type=click.Path(path_type=Path),
              help="Node config file (JSON, or TOML if it ends in .toml; pcloud.node.NodeConfig fields).")
@common
def relay(ctx: Ctx, listens: tuple[str, ...], quic: str | None, code: str | None, via: str | None,
          config: Path | None) -> None:
    """The headless cloud node: rendezvous + relay, Raft voter, encrypted archive (never the vault key)."""
    if code is not None:
        _relay_join(ctx, code, via)
    cfg = _node_config(quic, (), (), config, relay_listen=list(listens))
    if not cfg.relay_listen:
        cfg.relay_listen = ["127.0.0.1:3478"]
    if not quic and cfg.listen == "127.0.0.1:0":
        cfg.listen = cfg.relay_listen[0].rsplit(":", 1)[0] + ":0"
    cfg.policy = cfg.policy or "archive"
    _run_node(ctx, cfg, "cloud node")


def _relay_join(ctx: Ctx, code: str, via: str | None) -> None:
    """Enroll this cloud node as a storage voter (no vault key), before it starts serving."""
    import asyncio
    from .membership import join as do_join
    if (ctx.vault_path / "genesis.bin").exists():
        raise errors.BadArgument(f"{ctx.vault_path} is already enrolled in a vault; run `pcloud relay` without --join")
    res = asyncio.run(do_join(code, ctx.vault_path, "cloud", via, kind="server", expect_trust="storage"))
    ctx.err.print(f"[green]enrolled as storage node {res.device_id} of vault {res.vault_id}[/]")


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the demo directories instead of deleting them.")
@click.option("--local", is_flag=True, help="The single-device tour of the vault (no network).")
@common
def demo(ctx: Ctx, keep: bool, local: bool) -> None:
    """Three devices on this machine, narrated (no set-up, nothing leaves it)."""
    from .demo import run_demo
    run_demo(ctx.out, keep=keep, local=local)


# --------------------------------------------------------------- membership
def _node_call(ctx: Ctx, op: str, **args: Any) -> dict[str, Any]:
    """Ask this vault's running node; NodeNotRunning when none runs."""
    from .control import ControlError, node_client
    client = node_client(ctx.vault_path)
    if client is None:
        raise errors.NodeNotRunning(f"no node is running for this vault ({ctx.vault_path}); start `pcloud serve`")
    try:
        return client.call(op, **args)
    except ControlError as exc:
        if "unknown control op" in str(exc):
            raise errors.NodeNotRunning(f"the node running for this vault does not serve {op!r}; restart it "
                                        "(`pcloud serve`) with this version") from exc
        raise
    finally:
        client.close()


def _resolve_remote(ctx: Ctx, device: str) -> str:
    """DEVICE (short id, unique prefix or name) -> hex key, from the node's registry."""
    from .membership import resolve_device
    listing = _node_call(ctx, "devices")["devices"]
    return resolve_device([(bytes.fromhex(d["key"]), d["name"]) for d in listing], device).hex()


@cli.command()
@click.option("--trust", "trust", type=click.Choice(["owner", "member", "reader", "storage"]), default="member",
              show_default=True, help="Trust level the new device gets.")
@click.option("--ttl", default="10m", show_default=True, help="How long the code stays valid (90s, 10m, 2h).")
@click.option("--voter/--no-voter", default=None,
              help="Raft voter or not (default: owners, members and storage vote unless the joiner is a phone).")
@click.option("--qr/--no-qr", default=True, help="Also print the code as a QR code (for phones).")
@common
def invite(ctx: Ctx, trust: str, ttl: str, voter: bool | None, qr: bool) -> None:
    """A one-time invitation code for a new device (needs the running node; owners only)."""
    from .invitation import parse_duration
    seconds = parse_duration(ttl)
    data = _node_call(ctx, "invite", trust=trust, ttl=seconds, voter=voter)
    data.pop("ok", None)

    def human() -> None:
        ctx.out.print(f"invitation for a [bold]{trust}[/] device, valid until {data['expires']}:")
        ctx.out.print(f"\n    [bold green]{data['code']}[/]\n")
        ctx.out.print(f"on the new device: pcloud join {data['code']} [--relay HOST:PORT]")
        if qr:
            ctx.out.print(data["qr"], markup=False, highlight=False)

    ctx.emit({k: v for k, v in data.items() if k != "qr" or qr}, human)


@cli.command()
@click.argument("code")
@click.option("--name", help="This device's name (default: the host name).")
@click.option("--relay", help="HOST:PORT to send the join to: the inviter, or a cloud node that forwards it "
                              "(default: find the inviter on the LAN by mDNS).")
@click.option("--kind", type=click.Choice(["desktop", "laptop", "server", "phone"]), default=None,
              help="Device class (phones join as non-voting replicas).")
@click.option("--mdns", "mdns", multiple=True, default=["127.0.0.1"], show_default=True,
              help="Interface address(es) to look for the inviter on, or 'all'.")
@common
def join(ctx: Ctx, code: str, name: str | None, relay: str | None, kind: str | None, mdns: tuple[str, ...]) -> None:
    """Enroll this device in a vault with an invitation code."""
    import asyncio
    from .membership import join as do_join
    interfaces: list[str] | str = "all" if "all" in mdns else list(mdns)
    res = asyncio.run(do_join(code, ctx.vault_path, name, relay, kind=kind, mdns_interfaces=interfaces))
    data = {"device_id": res.device_id, "vault_id": res.vault_id, "trust": res.trust, "voter": res.voter,
            "name": res.name, "vault": res.vault_dir}
    ctx.emit(data, lambda: ctx.out.print(
        f"joined vault {res.vault_id} as [bold]{res.name}[/] ({res.device_id}), trust {res.trust}"
        f"{'' if res.voter else ', non-voting replica'}; start it with `pcloud serve`"))


@cli.command()
@common
def devices(ctx: Ctx) -> None:
    """The vault's devices: trust level, voter, online, revoked (needs the running node)."""
    listing = _node_call(ctx, "devices")["devices"]
    data = [{"device_id": d["device_id"], "name": d["name"], "trust": d["trust"], "voter": d["voter"],
             "online": d["online"], "revoked": d["revoked"]} for d in listing]

    def human() -> None:
        t = Table("device", "name", "trust", "voter", "online", "revoked")
        for d in data:
            t.add_row(d["device_id"], d["name"], d["trust"], "yes" if d["voter"] else "no",
                      "[green]yes[/]" if d["online"] else "no", "[red]revoked[/]" if d["revoked"] else "")
        ctx.out.print(t)

    ctx.emit(data, human)


@cli.command()
@click.argument("device")
@click.argument("level", type=click.Choice(["owner", "member", "reader", "storage"]))
@common
def trust(ctx: Ctx, device: str, level: str) -> None:
    """Change DEVICE's trust level (owners only; DEVICE: short id, unique prefix or name)."""
    key = _resolve_remote(ctx, device)
    answer = _node_call(ctx, "trust", device=key, trust=level, level=level)
    _check_answer(answer, "trust change")
    ctx.emit({"device": key, "trust": level}, lambda: ctx.out.print(f"{device} is now {level}"))


@cli.command()
@click.argument("device")
@common
def revoke(ctx: Ctx, device: str) -> None:
    """Revoke DEVICE for good and rotate the vault key (owners only)."""
    key = _resolve_remote(ctx, device)
    answer = _node_call(ctx, "revoke", device=key)
    _check_answer(answer, "revocation")
    answer.pop("ok", None)
    ctx.emit(answer | {"device": key}, lambda: ctx.out.print(
        f"revoked {device}" + (f"; new objects are sealed with key epoch {answer['epoch']}" if "epoch" in answer
                               else "")))


def _folder_state(f: dict[str, Any]) -> str:
    """One word or line for a folder's state in `pcloud folders`."""
    if f.get("error"):
        return f"retrying: {f['error']}"
    if not f.get("scanned"):
        return "scanning"
    return f"{f['pending']} pending" if f.get("pending") else "in sync"


@cli.command()
@click.argument("action", type=click.Choice(["list", "add", "remove"]), default="list")
@click.argument("target", required=False)
@common
def folders(ctx: Ctx, action: str, target: str | None) -> None:
    """The running node's watched folders: list, add DIR[=VAULTPATH] (kept across restarts), remove DIR."""
    import os
    if action == "list":
        data = _node_call(ctx, "folders")["folders"]

        def human() -> None:
            t = Table("folder", "vault path", "sent", "received", "state", "from")
            for f in data:
                t.add_row(f["dir"], "/" + f["vault_path"], str(f["committed"]), str(f["applied"]), _folder_state(f),
                          "--folder" if f["from_config"] else "folders add")
            ctx.out.print(t)

        ctx.emit(data, human)
        return
    if not target:
        raise errors.BadArgument(f"usage: pcloud folders {action} " + ("DIR[=VAULTPATH]" if action == "add" else "DIR"))
    if action == "add":
        local, sep, vpath = target.partition("=")
        spec = os.path.abspath(os.path.expanduser(local)) + (sep + vpath)
        answer = _node_call(ctx, "folder_add", spec=spec)
    else:
        answer = _node_call(ctx, "folder_remove", dir=os.path.abspath(os.path.expanduser(target)))
    answer.pop("ok", None)
    ctx.emit(answer, lambda: ctx.out.print(
        f"{'watching' if action == 'add' else 'stopped watching'} {answer['dir']}"
        + (f" as /{answer['vault_path']}" if action == "add" else "")))


# --------------------------------------------------------------------- pins
def _pin_path(path: str) -> str:
    return "" if path.strip() in ("/", ".") else path


def _node_or_none(ctx: Ctx) -> Any:
    from .control import node_client
    return node_client(ctx.vault_path)


@cli.command()
@click.argument("vaultpath")
@common
def pin(ctx: Ctx, vaultpath: str) -> None:
    """Keep VAULTPATH's content on this device, now and whenever main changes (on-demand devices).

    With a running node the content is fetched before this returns; without one
    the pin is recorded and the next `pcloud serve` fetches it.
    """
    from . import pins as pins_mod
    from .control import ControlError
    path = _pin_path(vaultpath)
    client = _node_or_none(ctx)
    if client is None:
        data = {"pins": pins_mod.add_pin(ctx.vault_path, path), "path": pins_mod.paths.normalize(path),
                "node": "not running", "complete": False, "stored": 0}
    else:
        try:
            data = client.call("pin", path=path)
        except ControlError as exc:
            if "unknown control op" in str(exc):
                raise errors.NodeNotRunning("the node running for this vault does not serve 'pin'; restart it "
                                            "(`pcloud serve`) with this version") from exc
            raise
        finally:
            client.close()
        data.pop("ok", None)

    def human() -> None:
        where = "/" + data["path"]
        if data.get("node") == "not running":
            ctx.out.print(f"pinned {where}; no node is running: its content is fetched when `pcloud serve` starts")
        elif data.get("complete"):
            extra = "" if data.get("policy") == "on-demand" else f" (policy {data.get('policy')}: everything is kept)"
            ctx.out.print(f"pinned {where}: kept on this device, {data['stored']} objects fetched now{extra}")
        else:
            ctx.out.print(f"pinned {where}; not all of it is here yet ({data.get('reason')}): the node keeps trying")

    ctx.emit(data, human)


@cli.command()
@click.argument("mode", type=click.Choice(["full", "on-demand", "archive"]), required=False)
@click.option("--device", "device", default=None, help="Another device (short id, prefix or name; owners only).")
@common
def policy(ctx: Ctx, mode: str | None, device: str | None) -> None:
    """Show this device's replication policy, or set MODE in the registry (needs the running node)."""
    if mode is None:
        if device is not None:
            raise errors.BadArgument("usage: pcloud policy [MODE] [--device DEVICE] (showing is for this device)")
        status = _node_call(ctx, "status")
        data = {"device_id": status["device_id"], "policy": status["policy"]}
        ctx.emit(data, lambda: ctx.out.print(f"{data['device_id']}: {data['policy']}"))
        return
    key = _resolve_remote(ctx, device) if device else None
    answer = _node_call(ctx, "policy", mode=mode, device=key)
    _check_answer(answer, "policy change")
    answer.pop("ok", None)
    ctx.emit(answer, lambda: ctx.out.print(f"{device or 'this device'}: policy {mode} (in the registry)"))


@cli.command()
@click.argument("vaultpath")
@common
def unpin(ctx: Ctx, vaultpath: str) -> None:
    """Stop keeping VAULTPATH's content up to date (it is fetched on open again)."""
    from . import pins as pins_mod
    path = _pin_path(vaultpath)
    client = _node_or_none(ctx)
    if client is None:
        data = {"pins": pins_mod.remove_pin(ctx.vault_path, path)}
    else:
        client.close()
        data = _node_call(ctx, "unpin", path=path)
        data.pop("ok", None)
    ctx.emit(data, lambda: ctx.out.print(f"unpinned /{pins_mod.paths.normalize(path)}"))


@cli.command()
@common
def pins(ctx: Ctx) -> None:
    """This device's pinned paths."""
    from . import pins as pins_mod
    data = pins_mod.read_pins(ctx.vault_path)

    def human() -> None:
        for p in data:
            ctx.out.print("/" + p)
        if not data:
            ctx.out.print("nothing pinned")

    ctx.emit(data, human)


def _check_answer(answer: dict[str, Any], what: str) -> None:
    # A node without the membership service answers with the state machine's Result fields.
    if "code" in answer and answer["code"] != "ok":
        raise errors.CommandRejected(f"{what} refused: {answer['code']}: {answer.get('reason')}")


# ------------------------------------------------------------------- helpers
def _local_size(p: Path) -> int | None:
    try:
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    except OSError:
        return None


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _ls_line(e: Entry) -> str:
    if e.kind == "dir":
        return f"[bold blue]{e.path}/[/]"
    tag = " [magenta](doc)[/]" if e.kind == "doc" else ""
    return f"{_human(e.size):>10}  {e.path}{tag}"


def main() -> None:
    cli(prog_name="pcloud")

"""`nextclick`: demo, run, generate, topics, and the state tools. Errors exit non-zero with one line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import orjson

from nextclick.operators.channels import ID_TYPES
from nextclick.operators.infra.config import Config, load_config


def _config(args: argparse.Namespace) -> Config:

    config = load_config(getattr(args, "config", None))
    if getattr(args, "bootstrap", None):
        config = config.replace(kafka={"bootstrap.servers": args.bootstrap})
    return config


def cmd_demo(args: argparse.Namespace) -> int:
    from nextclick.flows.demo import run_demo

    summary = run_demo(bootstrap=args.bootstrap, speed=args.speed, rate=args.rate, max_seconds=args.max_seconds)
    return 0 if summary.decisions_by_rule else 1


def cmd_run(args: argparse.Namespace) -> int:
    from nextclick.flows import cluster as cl
    from nextclick.flows.runner import FlowRunner, metrics_settings, preflight
    from nextclick.flows.targeting import build_flow
    from nextclick.operators.exchange import settings_digest
    from nextclick.operators.identity.guards import load_identity_rules
    from nextclick.operators.infra.config import ConfigError
    from nextclick.operators.infra.logs import configure_logging
    from nextclick.operators.infra.runtime import tune_gc
    from nextclick.operators.io.cluster_hello import peers_not_joining, publish_hello, say_refused, starting
    from nextclick.operators.io.drain import now_ms
    from nextclick.operators.io.kafka_admin import redacted, wait_for_broker
    from nextclick.operators.io.sink_registry import decision_sink
    from nextclick.operators.rules.loader import load_configured_rules
    from nextclick.operators.state.manifest import hold_run_lock
    from nextclick.operators.tools.savepoint import (
        Generations,
        Placement,
        SavepointManifest,
        check_input_covers,
        check_volume_placement,
        clear_scratch,
        restore,
    )
    from nextclick.operators.tools.schedule import check_recovery_plan, start_scheduler
    from nextclick.operators.tools.startup import check_start, cluster_settings, reset_state

    runner = FlowRunner()  # first: SIGTERM/SIGINT are handled by its thread from here on
    configure_logging(args.log_level)
    config = _config(args)
    place = cl.resolve(args.process_id, args.addresses, args.processes, os.environ.get(cl.ORDINAL_VAR))
    try:
        secret = config.privacy.resolve_secret()  # refuse to start without the hashing secret, before anything else
        ruleset = load_configured_rules(config)  # a bad rules file or tracking plan fails fast too
        load_identity_rules(config.identity.file or None)  # and so does a bad identity rules file
        if args.stop_at_end:
            config = config.replace(flow={"stop_at_end": True})
        config = metrics_settings(config, args.metrics_address, args.metrics_port)
        decision_sink(config)  # a wrong flow.decision_sink: one line, before waiting for Kafka
        if args.workers < 1:  # Bytewax would take it and fail later, with less to say
            raise cl.ClusterError(f"--workers must be at least 1, not {args.workers}")
        parts, count = cl.recovery_partitions(place, args.recovery_partitions, args.recovery_per_process)

        def init_recovery(directory: Path) -> None:
            """Only for a new deployment (or a restore): the start-up checks decide when."""
            cl.prepare_recovery(directory, parts, count, check=False)

        shared = cluster_settings(config, secret)
        logging.getLogger("nextclick").info("starting", extra={
            "kafka": redacted(config.kafka), "inputs": list(config.topics.inputs),
            "decisions": config.topics.decisions, "dead_letter": config.topics.dead_letter,
            "control": config.topics.control, "shards": config.state.shards, "state_dir": config.state.dir,
            "rules": ruleset.source, "rule_ids": [r.id for r in ruleset.rules], "workers": args.workers,
            "process_id": place.process_id, "metrics_address": config.flow.metrics_address or None,
            # What every process of a cluster must share; a peer's batch carrying other settings is refused.
            "settings_digest": settings_digest(shared), "settings": shared})
        wait_for_broker(config.kafka, timeout_s=args.broker_timeout)
        if len(place.addresses) > 1:  # supersedes what an earlier start of this process said (a refusal)
            publish_hello(config.kafka, config.topics.control,
                          starting(config.flow.group_id, place.process_id or 0, now_ms()), timeout_s=5.0)
        if place.addresses:  # a pod may start before its headless-DNS name (or a peer's) resolves
            cl.wait_for_names(place.addresses, args.peer_dns_timeout)
        preflight(config)  # topics exist, directories writable: one clear line each, nothing written
        check_recovery_plan(config)  # on_lost_volume = "restore": an interval, and retention that covers it
        recovery = Path(config.state.recovery_dir)
        if cleared := clear_scratch(config):
            logging.getLogger("nextclick").warning("removed savepoint copies left by a killed process",
                                                   extra={"directories": cleared})
        generations, rejoin = None, None
        if config.state.on_lost_volume == "restore":
            # Before anything is restored or created: a lost volume takes the whole cluster back to a savepoint.
            if place.process_id is not None and not args.recovery_per_process:
                raise ConfigError("state.on_lost_volume = \"restore\" is for per-pod volumes: "
                                  "add --recovery-per-process")
            generations = Generations(config, place.process_id or 0, place.processes,
                                      explicit=args.from_savepoint or config.state.initial_savepoint.strip() or None,
                                      refusals=lambda since: peers_not_joining(
                                          config.kafka, config.topics.control, config.flow.group_id,
                                          int(since * 1000), place.processes))
            rejoin = generations.decide()
            if rejoin.restore and rejoin.savepoint:
                check_input_covers(config, SavepointManifest.read(rejoin.savepoint))  # before anything is cleared
            if rejoin.reset:
                logging.getLogger("nextclick").warning("the cluster goes back to a savepoint: clearing this process's "
                                                       "state", extra={"savepoint": rejoin.savepoint,
                                                                       "generation": rejoin.generation})
                reset_state(config, dry_run=False)
        if rejoin is not None and generations is not None and (rejoin.restore or generations.has_state):
            # The generation decides: restore its savepoint, or resume state already at it (whatever the flag
            # says, and even once that savepoint has been pruned).
            source = rejoin.savepoint if rejoin.restore else None
        else:
            source = args.from_savepoint or config.state.initial_savepoint.strip()
        if source:
            # Per-pod volumes: fetch only the shards Bytewax will route to this process's workers.
            placement = (Placement(place.process_id, place.processes, args.workers, config.state.shard_placement)
                         if args.recovery_per_process and place.process_id is not None else None)
            restored = restore(config, source, init_recovery=init_recovery, placement=placement)
            logging.getLogger("nextclick").info(
                "state already restored from this savepoint; resuming" if restored.resumed else "restored savepoint",
                extra={"savepoint": source, "shards": restored.manifest.shards,
                       "fetched": len(restored.shards), "bytes": restored.bytes,
                       "seconds": round(restored.seconds, 2), "positions": len(restored.manifest.positions)})
        if args.recovery_per_process and any(recovery.glob("*.sqlite3")):
            cl.prepare_recovery(recovery, parts, count, check=True)  # another pod's volume is refused
        plan = check_start(config, init_recovery=init_recovery)
        if rejoin is not None:  # online savepoints record the generation that took them (their line)
            plan = dataclasses.replace(plan, generation=rejoin.generation)
        if args.recovery_per_process and place.process_id is not None and plan.resumes:
            check_volume_placement(config, Placement(place.process_id, place.processes, args.workers,
                                                     config.state.shard_placement))
        # Before Bytewax opens the recovery: a second flow as this process on this state directory stops
        # here (the checks above only read state that exists; a refused start leaves no lock file behind).
        run_lock = hold_run_lock(Path(config.state.dir), place.process_id or 0)  # noqa: F841 - held until exit
        if generations is not None and rejoin is not None:
            generations.joined(rejoin.generation, source)  # no process starts before every one is at it
        flow = build_flow(config, ruleset=ruleset, plan=plan, stop=runner.stop,
                          readers=args.workers * max(1, len(place.addresses)))
    except Exception as exc:
        from nextclick.flows.runner import full_volume
        from nextclick.operators.infra.failures import is_device_full, one_line

        full = full_volume(config) if is_device_full(exc) else None
        if full:
            full = f"no space left on the device: {full}; free or grow the volume and start again, nothing is lost"
        if len(place.addresses) > 1:  # its peers, waiting for it to connect, say why it does not
            say_refused(config.kafka, config.topics.control, config.flow.group_id, place.process_id or 0,
                        full or one_line(exc))
        if full:
            raise OSError(full) from None
        raise
    tune_gc()
    scheduler = start_scheduler(config, place.process_id, runner.stop)  # process 0 only; stops on drain
    try:
        return runner.run(config, flow, workers=args.workers, process_id=place.process_id,
                          addresses=list(place.addresses), recovery_partitions=count, resumes=plan.resumes,
                          lineage=plan.lineage)
    finally:
        if scheduler is not None:
            scheduler.close()


def cmd_serve(args: argparse.Namespace) -> int:
    from nextclick.flows.serve import serve
    from nextclick.operators.infra.logs import configure_logging

    configure_logging(args.log_level)
    return serve(_config(args))


def cmd_topics_create(args: argparse.Namespace) -> int:
    from nextclick.operators.io.kafka_admin import wait_for_broker
    from nextclick.operators.io.topics import TopicsError, create_topics, plan_topics

    config = _config(args)
    wait_for_broker(config.kafka, timeout_s=args.broker_timeout)
    try:
        report = create_topics(config.kafka, plan_topics(config), dry_run=args.dry_run)
    except TopicsError as exc:
        print(orjson.dumps({"topics": exc.report}, option=orjson.OPT_INDENT_2).decode())
        raise
    print(orjson.dumps({"topics": report}, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from nextclick.flows.generate import plan, stream
    from nextclick.operators.infra.clock import ScaledClock, SystemClock
    from nextclick.operators.io.kafka_admin import client_config, wait_for_broker
    from nextclick.operators.io.topics import ensure_topics

    config = _config(args)
    topics = tuple(args.topics.split(",")) if args.topics else config.topics.inputs
    wait_for_broker(config.kafka, timeout_s=args.broker_timeout)
    ensure_topics(config.kafka, {t: args.partitions for t in topics})
    clock = SystemClock() if args.speed == 1 else ScaledClock(args.speed)
    scripted = plan(clock.now_ms(), personas_each=args.personas, seed=args.seed) if args.personas else []
    producer = Producer(client_config(config.kafka, **{"linger.ms": 5}))
    stop = threading.Event()
    started = time.monotonic()

    def progress() -> None:
        while not stop.wait(5):
            print(f"generating... {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)

    threading.Thread(target=progress, daemon=True).start()
    try:
        stats = stream(producer, topics, clock, scripted, rate=args.rate, customers=args.customers,
                       duration_ms=int(args.duration * 1000 * args.speed), garbage_every=args.garbage_every,
                       seed=args.seed, stop=stop)
    finally:
        stop.set()
    print(orjson.dumps({"sent": stats.sent, "garbage": stats.garbage, "by_channel": stats.by_channel}).decode())
    return 0


def cmd_profile_get(args: argparse.Namespace) -> int:
    from nextclick.operators.identity.graph import resolve_offline
    from nextclick.operators.tools.profiles import read_profile
    from nextclick.operators.tools.startup import partial_volume, verify_config

    config = load_config(args.config)
    if not Path(config.state.dir).is_dir():
        raise LookupError(f"no state directory at {config.state.dir} (state.dir)")
    verify_config(config)
    customer = _customer_key(args, config)
    profile = read_profile(config.state.dir, config.state.shards, customer)
    if profile is None:
        what = "that hashed key" if args.hashed else f"that {args.id_type} identifier"
        partial = partial_volume(config)
        if partial:  # the profile, or the identity store that resolves the identifier, may be elsewhere
            raise LookupError(f"no profile holds {what} on this volume: {partial}; ask the profile service "
                              "(`nextclick serve`), or read a directory holding every store")
        raise LookupError(f"no profile holds {what} in {config.state.dir}")
    if "quarantined" not in profile:
        profile["derived"] = _derived(profile, config, args.at)
    key, anchor = resolve_offline(config.state.dir, customer)
    # Which identifiers the profile holds, by type and how many: keys only, never a raw value.
    profile["identity"] = {"profile_key": key, "linked": anchor is not None,
                           "identifiers": {t: len(keys) for t, keys in (profile.get("ids") or {}).items()}}
    print(orjson.dumps(profile, option=orjson.OPT_INDENT_2).decode())
    return 0


def _derived(stored: dict[str, Any], config: Config, at: str | None) -> dict[str, Any]:
    """What a rule of the configured rules file would read for this profile at `at` (default: now)."""
    import msgspec

    from nextclick.operators.infra.clock import SystemClock
    from nextclick.operators.profile.model import Profile
    from nextclick.operators.rules.loader import load_configured_rules
    from nextclick.operators.tools.explain import attributes_at, rfc3339

    ruleset = load_configured_rules(config)
    at_ms = SystemClock().now_ms() if at is None else _time_ms(at)
    profile = msgspec.convert(stored, Profile)
    return {"at": rfc3339(at_ms), "rules_file": ruleset.source, "attributes": attributes_at(profile, ruleset, at_ms)}


def _time_ms(text: str) -> int:
    from datetime import datetime

    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at: {text!r} is not epoch milliseconds or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"--at: {text!r} has no UTC offset (add Z or +02:00)")
    return int(moment.timestamp() * 1000)


def _customer_key(args: argparse.Namespace, config: Config) -> str:
    """The key KEY names; refuses one no event can have (an outside probe: `profile erase ""` exited 0 and
    left the flow an erase command it dead-lettered)."""
    from nextclick.operators.identity.pseudonyms import pseudonymize
    from nextclick.operators.io.control import is_customer_key, names_someone

    if args.hashed:
        if not is_customer_key(args.key):
            raise ValueError("KEY with --hashed must be 32 lowercase hexadecimal characters (the key `nextclick keys` "
                             "prints)")
        return str(args.key)
    if not names_someone(args.key):
        raise ValueError("KEY is empty or shows nothing: no event is keyed by such an identifier")
    return pseudonymize(args.id_type, args.key, config.privacy.resolve_secret())


def cmd_profile_erase(args: argparse.Namespace) -> int:
    from nextclick.operators.infra.logs import configure_logging
    from nextclick.operators.tools.startup import verify_config

    configure_logging("WARNING")  # librdkafka's complaints (a broker down) as JSON lines, beside the one line

    config = load_config(args.config)
    verify_config(config)
    customer = _customer_key(args, config)
    if args.online:
        from nextclick.operators.io.control import send_command

        request_id = args.request_id or f"cli-{time.time_ns()}"
        send_command(config.kafka, config.topics.control, "erase", request_id, customer.encode(),
                     customer_key=customer, requested_at=int(time.time() * 1000))
        print(orjson.dumps({"customer": customer, "request_id": request_id, "sent_to": config.topics.control,
                            "state": "queued: the flow erases it when it reads the command (at its next batch "
                                     "when running, at its next start when stopped)"}).decode())
        return 0
    from nextclick.operators.tools.erase import erase_offline

    print(orjson.dumps(erase_offline(config, customer, args.request_id)).decode())
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`address,key` for every line of stdin: a delivery system's contact table, made where it lives."""
    import csv

    from nextclick.operators.identity.pseudonyms import pseudonymize_cached

    config = _config(args)
    secret = config.privacy.resolve_secret()
    writer = csv.writer(sys.stdout, lineterminator="\n")
    written = 0
    for line in sys.stdin:
        raw = line.rstrip("\r\n")  # identifiers are hashed exactly as sent: never trimmed or folded
        if not raw or raw.isspace():
            continue
        writer.writerow([raw, pseudonymize_cached(args.id_type, raw, secret)])
        written += 1
        if written % 100_000 == 0:
            print(f"keys: {written} written", file=sys.stderr, flush=True)
    print(f"keys: {written} {args.id_type} identifiers hashed with the configured secret", file=sys.stderr)
    return 0


def cmd_state_info(args: argparse.Namespace) -> int:
    from nextclick.operators.state.keys import PROFILE_PREFIX
    from nextclick.operators.state.manifest import family_dirs
    from nextclick.operators.state.store import ShardStore, dir_bytes
    from nextclick.operators.tools.startup import state_families, verify_config

    config = load_config(args.config)
    state_dir = Path(config.state.dir)
    if not state_dir.exists():
        raise LookupError(f"no state directory at {state_dir}")
    manifest = verify_config(config)
    shards: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for family in state_families(config):
        for shard, path in sorted(family_dirs(state_dir, family).items()):
            if shard >= family.shards:
                continue
            store = ShardStore.open_read_only(path)
            try:
                stats = store.stats()
                customers = sum(1 for _ in store.scan(PROFILE_PREFIX)) if args.exact and family.profiles else None
            finally:
                store.close()
            entry = {"shard": shard, "seq": stats["seq"], "committed_floor": stats["committed_floor"],
                     "restorable_from_seq": stats["oldest_restorable_seq"],
                     "keys_estimate": stats["keys"], "customers": customers, "bytes": stats["disk_bytes"]}
            if family.name == "profiles":
                shards.append(entry)
            else:
                others.append({"family": family.name, **entry})
            if args.exact:
                print(f"counted {family.rel(shard)}", file=sys.stderr, flush=True)
    every = shards + others
    recovery = Path(config.state.recovery_dir)
    recovery_bytes = dir_bytes(recovery)
    info = {
        "state_dir": str(state_dir),
        "identity": None if manifest is None else {
            "lineage": manifest.lineage, "shards": manifest.shards, "profile_format": manifest.profile_format,
            "secret_fingerprint": manifest.secret_fingerprint, "created_at": manifest.created_at,
            "restored_from": manifest.restore.savepoint if manifest.restore else None,
            "identity_priority": list(manifest.identity_priority) if manifest.identity_priority else None},
        "shards_configured": config.state.shards,
        "shards_on_disk": len(shards),
        # Every profile, whichever family holds it (linked profiles are one per customer, however
        # many identifiers they hold).
        "customers": sum(s["customers"] or 0 for s in every) if args.exact else None,
        "keys_estimate": sum(s["keys_estimate"] for s in every),
        "bytes_on_disk": sum(s["bytes"] for s in every),
        "recovery_dir": str(recovery),
        "recovery_bytes": recovery_bytes,
        "checkpoints": {"kept_per_shard": config.state.keep_checkpoints,
                        "newest_seq": max((s["seq"] for s in shards), default=0)},
        "shards": shards,
        "other_stores": others,
    }
    print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_state_reset(args: argparse.Namespace) -> int:
    from nextclick.operators.tools.startup import reset_state

    config = load_config(args.config)
    report = reset_state(config, dry_run=not args.yes)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    if not args.yes:
        print(f"nextclick: this would destroy {report['shard_directories']} shard directories (about "
              f"{report['keys_estimate']} keys: every profile, consent and opt-out) in {report['state_dir']} and "
              f"Bytewax's recovery in {report['recovery_dir']}; nothing was changed. Take a savepoint first if "
              "you may need them, then add --yes", file=sys.stderr)
        return 1
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from nextclick.operators.conditions.fields import RulesError
    from nextclick.operators.rules.loader import check_rules

    ruleset, errors = check_rules(args.file, args.tracking_plan)
    if ruleset is None:
        for error in errors:
            print(error)
        # The errors name their own file; a tracking plan's are in the plan, not in the rules file.
        files = [args.file] + ([str(args.tracking_plan)] if args.tracking_plan else [])
        raise RulesError(f"{' and '.join(files)}: {len(errors)} error{'s' if len(errors) > 1 else ''} (listed above)")
    print(orjson.dumps({"rules_file": ruleset.source, "valid": True, "rules": [r.id for r in ruleset.rules],
                        "signals": [s.name for s in ruleset.signals], "triggers": sorted(ruleset.triggers)},
                       option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    from nextclick.operators.rules.loader import load_rules
    from nextclick.operators.tools.scenarios import (
        ScenarioFailed,
        load_scenario,
        report_line,
        run_scenario,
        worth_showing,
    )

    ruleset = load_rules(args.file, args.tracking_plan)
    scenarios = [load_scenario(path, ruleset.plan, ruleset.consent_purposes)  # all checked before any runs
                 for path in args.scenarios]
    total = failed = 0
    without_ids = 0
    for scenario in scenarios:
        print(f"{scenario.path}: {scenario.description}")
        if scenario.rules is not None and scenario.rules.resolve() != Path(args.file).resolve():
            print(f"  note: the scenario names {scenario.rules}; testing {args.file}")
        without_ids += all(step.ids is None for step in scenario.steps)
        for check in run_scenario(scenario, ruleset):
            total += 1
            failed += not check.ok
            if worth_showing(check) or args.verbose:
                print("  " + report_line(check))
    if without_ids:
        print(f"note: {without_ids} scenario{'s' * (without_ids != 1)} set no `ids`: their customers count as "
              "reachable on every channel, so every decision uses its cooldown and caps. In the flow a profile "
              "holds the identifiers it was keyed by and linked to, and a decision for a channel none of them "
              "addresses goes out with address null and uses neither: set `ids` to test that (docs/rules.md, "
              "\"Testing rules with scenarios\")")
    print(f"{len(scenarios)} scenario{'s' * (len(scenarios) != 1)}, {total} expectations, {failed} failed")
    if failed:
        raise ScenarioFailed(f"{failed} of {total} expectations failed (FAIL lines above)")
    return 0


def cmd_rules_explain(args: argparse.Namespace) -> int:
    from nextclick.operators.rules.loader import load_rules
    from nextclick.operators.tools.explain import explain, read_story, refused_lines, render

    ruleset = load_rules(args.file, args.tracking_plan)
    story = read_story(args.events, ruleset.plan, ruleset.consent_purposes)
    for entry in explain(ruleset, story):
        print(orjson.dumps(entry).decode() if args.json else render(entry) + "\n")
    refused = refused_lines(args.events, story)
    if refused is not None:
        raise refused
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_savepoint_create(args: argparse.Namespace) -> int:
    from nextclick.operators.state.savepoint_parts import Destination
    from nextclick.operators.tools.savepoint import Placement, create_offline, create_online

    config = load_config(args.config)
    # A bare name is a savepoint inside state.savepoint_dir (the only place the flow writes them), online
    # or offline alike.
    dest = args.dest if "/" in args.dest else Destination(config.state.savepoint_dir).describe(args.dest)
    if not args.online:
        manifest = create_offline(config, Path(dest), recovery_dir=args.recovery_dir, progress=_progress)
        print(manifest.to_json().decode())
        return 0
    placement = (Placement(0, args.processes, args.workers, config.state.shard_placement)
                 if args.processes else None)
    manifest = create_online(config, dest, timeout_s=args.timeout, request_id=args.request_id,
                             placement=placement, progress=_progress)
    print(manifest.to_json().decode())
    return 0


def cmd_savepoint_info(args: argparse.Namespace) -> int:
    from nextclick.operators.tools.savepoint import info

    print(orjson.dumps(info(args.src), option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_savepoint_list(args: argparse.Namespace) -> int:
    from nextclick.operators.tools.savepoint import catalogue

    root = args.root or load_config(args.config).state.savepoint_dir
    complete, incomplete = catalogue(root)
    print(orjson.dumps({"savepoint_dir": str(root), "incomplete": incomplete, "savepoints": [
        {"id": m.id, "created_at": m.created_at, "mode": m.mode, "shards": m.shards} for m in complete]},
        option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_savepoint_prune(args: argparse.Namespace) -> int:
    from nextclick.operators.tools.savepoint import prune

    root = args.root or load_config(args.config).state.savepoint_dir
    deleted = prune(root, args.keep, dry_run=args.dry_run)
    print(orjson.dumps({"savepoint_dir": str(root), "kept": args.keep, "dry_run": args.dry_run,
                        "deleted": deleted}).decode())
    return 0


def cmd_savepoint_reshard(args: argparse.Namespace) -> int:
    from nextclick.operators.tools.savepoint import reshard

    manifest = reshard(Path(args.src), Path(args.dest), args.shards, progress=_progress)
    print(manifest.to_json().decode())
    return 0


TRACKING_PLAN_HELP = ("the tracking plan (TOML) the flow runs with (flow.tracking_plan): event types and attributes "
                      "added to the shipped schemas (default: the shipped schemas)")


def _seconds(text: str) -> float:
    """A wait in seconds: more than zero (a timeout of 0 or -5 can only fail)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextclick", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="print the traceback of a fatal error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole loop locally on the embedded broker and print decisions")
    demo.add_argument("--bootstrap", help="use this Kafka cluster instead of starting the embedded broker")
    demo.add_argument("--speed", type=float, default=150.0, help="simulated minutes per real minute (default 150)")
    demo.add_argument("--rate", type=float, default=150.0, help="background events per real second")
    demo.add_argument("--max-seconds", type=float, default=60.0, help="stop after this many real seconds")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the flow against a Kafka cluster (production entry point)")
    run.add_argument("--config", help="TOML configuration file (NEXTCLICK_* variables override it)")
    run.add_argument("--bootstrap", help="override kafka bootstrap.servers")
    run.add_argument("--workers", type=int, default=1, help="worker threads in this process")
    run.add_argument("--process-id", type=int,
                     help="this process's index in a multi-process cluster (default: the ordinal at the end of "
                          "$NEXTCLICK_POD_NAME, a StatefulSet pod's name)")
    run.add_argument("--addresses", help="all processes' host:port, separated by ';' (multi-process), or one "
                                         "template with {i} for the process index, with --processes")
    run.add_argument("--processes", type=int, help="how many processes an --addresses template expands to")
    run.add_argument("--recovery-partitions", type=int, default=1, help="when creating the recovery dir")
    run.add_argument("--recovery-per-process", action="store_true",
                     help="each process has its own recovery dir (per-pod volumes): create only partition "
                          "<process id> of <processes> there, and refuse a dir holding any other")
    run.add_argument("--stop-at-end", action="store_true", help="stop at the end of the input (backfill)")
    run.add_argument("--from-savepoint", metavar="SRC",
                     help="start from this savepoint (a directory or s3:// URL) on empty state.dir and "
                          "state.recovery_dir; a start whose state already came from it resumes, so it may stay")
    run.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve /metrics, /healthz and /readyz here (default: flow.metrics_address; none)")
    run.add_argument("--metrics-port", type=int, metavar="PORT", help="same as --metrics-address 127.0.0.1:PORT")
    run.add_argument("--broker-timeout", type=_seconds, default=120.0, help="seconds to wait for Kafka at start")
    run.add_argument("--peer-dns-timeout", type=_seconds, default=60.0,
                     help="seconds to wait at start for every --addresses host name to resolve")
    run.add_argument("--log-level", default=os.environ.get("NEXTCLICK_LOG_LEVEL", "INFO"))
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="print the traceback of a fatal error")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="the profile query service: HTTP over the profile view topic")
    serve.add_argument("--config", help="TOML configuration file ([serve], [topics] profiles, [privacy], [kafka])")
    serve.add_argument("--bootstrap", help="override kafka bootstrap.servers")
    serve.add_argument("--log-level", default="INFO", help="DEBUG logs one line per request (never the path)")
    serve.set_defaults(func=cmd_serve)

    topics = sub.add_parser("topics", help="create the topics the flow reads and writes")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_create = topics_sub.add_parser(
        "create", help="create the input, control, decision and dead-letter topics that are missing",
        description="Create every topic of the configuration that does not exist yet, with the partitions, "
                    "replication factor and retention of [topics]. Existing topics are reported, never changed.")
    topics_create.add_argument("--config", help="TOML configuration file (NEXTCLICK_* variables override it)")
    topics_create.add_argument("--bootstrap", help="override kafka bootstrap.servers")
    topics_create.add_argument("--dry-run", action="store_true", help="report what would be created; create nothing")
    topics_create.add_argument("--broker-timeout", type=_seconds, default=60.0, help="seconds to wait for Kafka")
    topics_create.set_defaults(func=cmd_topics_create)

    gen = sub.add_parser("generate", help="stream the synthetic multi-channel workload to Kafka")
    gen.add_argument("--config", help="TOML configuration file (for kafka settings and topics)")
    gen.add_argument("--bootstrap", help="override kafka bootstrap.servers")
    gen.add_argument("--topics", help="comma-separated topics (default: the configured input topics)")
    gen.add_argument("--partitions", type=int, default=2, help="partitions for topics it creates")
    gen.add_argument("--rate", type=float, default=200.0, help="background events per second")
    gen.add_argument("--customers", type=int, default=10_000, help="background customer pool")
    gen.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    gen.add_argument("--personas", type=int, default=2, help="scripted customers per persona (0: none)")
    gen.add_argument("--garbage-every", type=int, default=0, help="make every Nth message garbage (0: none)")
    gen.add_argument("--speed", type=float, default=1.0, help="clock speed for event times (1 = real time)")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--broker-timeout", type=_seconds, default=30.0)
    gen.set_defaults(func=cmd_generate)

    profile = sub.add_parser("profile", help="read profiles from the latest checkpoint")
    profile_sub = profile.add_subparsers(dest="profile_command", required=True)
    get = profile_sub.add_parser(
        "get", help="print one customer's committed profile as JSON, with the attributes rules read now",
        description="The stored profile (facts, signals, history) and, under \"derived\", every attribute a rule "
                    "of the configured rules file would read at --at: segment, RFM scores, days since, signals. "
                    "Any identifier of a linked profile shows that profile, and \"identity\" says how many "
                    "identifiers of each type it holds (never a raw value).")
    get.add_argument("key", help="any identifier of the customer (hashed with the configured secret)")
    get.add_argument("--id-type", default="customer", choices=sorted(ID_TYPES),
                     help="identifier type of KEY (default customer)")
    get.add_argument("--hashed", action="store_true", help="KEY is already the pseudonymous key")
    get.add_argument("--config", help="TOML configuration file")
    get.add_argument("--at", help="when the derived attributes are computed for (epoch ms or RFC 3339; default now)")
    get.set_defaults(func=cmd_profile_get)
    erase = profile_sub.add_parser("erase", help="right to erasure: remove a customer from state and checkpoints")
    erase.add_argument("key", help="any identifier of the customer (hashed with the configured secret): every "
                                   "identifier linked with it goes too, with their profile")
    erase.add_argument("--id-type", default="customer", choices=sorted(ID_TYPES), help="identifier type of KEY")
    erase.add_argument("--hashed", action="store_true", help="KEY is already the pseudonymous key")
    erase.add_argument("--online", action="store_true",
                       help="send the erase command to the control topic for the running flow")
    erase.add_argument("--request-id", help="id of the erasure request (sent on the control topic)")
    erase.add_argument("--config", help="TOML configuration file")
    erase.set_defaults(func=cmd_profile_erase)

    keys = sub.add_parser(
        "keys", help="print `address,key` for identifiers read from stdin, hashed with the deployment's secret",
        description="Build a delivery system's contact table without sending addresses anywhere: each line of "
                    "stdin is one identifier (hashed exactly as written: not trimmed, not lower-cased); each line "
                    "of stdout is `identifier,key` (CSV), the key being what decisions carry in `address.key`.")
    keys.add_argument("--id-type", required=True, choices=sorted(ID_TYPES), help="what the lines are (email...)")
    keys.add_argument("--config", help="TOML configuration file (privacy.secret_file / NEXTCLICK_PRIVACY__SECRET)")
    keys.set_defaults(func=cmd_keys)

    rules = sub.add_parser("rules", help="check, test and explain a rules file (no Kafka needed)")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate a rules file, listing every error",
                                 description="Load a rules file as `nextclick run` would and list every mistake "
                                             "(file, rule or signal, field), not only the first.")
    check.add_argument("file", help="the rules file (TOML)")
    check.add_argument("--tracking-plan", metavar="PLAN", help=TRACKING_PLAN_HELP)
    check.set_defaults(func=cmd_rules_check)
    test = rules_sub.add_parser("test", help="run scenario files on the engine with a manual clock",
                                description="Run each scenario (docs/rules.md, \"Testing rules with scenarios\") "
                                            "against FILE; print PASS or FAIL per expectation; exit 1 on a failure.")
    test.add_argument("file", help="the rules file (TOML)")
    test.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario files (TOML)")
    test.add_argument("--verbose", action="store_true", help="print every expectation, also the empty ones")
    test.add_argument("--tracking-plan", metavar="PLAN", help=TRACKING_PLAN_HELP)
    test.set_defaults(func=cmd_rules_test)
    explain = rules_sub.add_parser("explain", help="show, trigger by trigger, why rules fired or did not",
                                   description="Run a story of events (JSON lines, as on the input topics) "
                                               "through the engine: for each trigger, each rule's conditions "
                                               "with their values, the gate that blocked it, the decision.")
    explain.add_argument("file", help="the rules file (TOML)")
    explain.add_argument("--events", required=True, help="the story: one event per line (JSON)")
    explain.add_argument("--json", action="store_true", help="one JSON object per trigger instead of text")
    explain.add_argument("--tracking-plan", metavar="PLAN", help=TRACKING_PLAN_HELP)
    explain.set_defaults(func=cmd_rules_explain)

    state = sub.add_parser("state", help="inspect the state directory")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    info = state_sub.add_parser("info", help="shards, customers, bytes on disk and checkpoints, as JSON")
    info.add_argument("--exact", action="store_true", help="count customers exactly (reads every shard)")
    info.add_argument("--config", help="TOML configuration file")
    info.set_defaults(func=cmd_state_info)
    reset = state_sub.add_parser("reset", help="start over: DESTROY all shards and recovery (asks for --yes)")
    reset.add_argument("--yes", action="store_true", help="really destroy them (without it: say what would go)")
    reset.add_argument("--config", help="TOML configuration file")
    reset.set_defaults(func=cmd_state_reset)

    savepoint = sub.add_parser("savepoint", help="consistent copies of all state, for backup, migration, re-sharding")
    savepoint_sub = savepoint.add_subparsers(dest="savepoint_command", required=True)
    create = savepoint_sub.add_parser("create", help="copy every shard and the input positions into DEST")
    create.add_argument("dest", help="a new directory (with --online: state.savepoint_dir/<name>, or <name>)")
    create.add_argument("--online", action="store_true",
                        help="the flow is running: ask it through the control topic and wait")
    create.add_argument("--timeout", type=_seconds, default=120.0, help="seconds to wait for an online savepoint")
    create.add_argument("--request-id", help="id of the savepoint command (with --online)")
    create.add_argument("--processes", type=int,
                        help="the running cluster's process count (with --online): a timeout names the processes "
                             "whose shards did not answer")
    create.add_argument("--workers", type=int, default=1, help="workers per process of the running cluster")
    create.add_argument("--recovery-dir", help="offline: the recovery directory (default state.recovery_dir)")
    create.add_argument("--config", help="TOML configuration file")
    create.set_defaults(func=cmd_savepoint_create)
    sp_info = savepoint_sub.add_parser("info", help="what a savepoint holds, as JSON")
    sp_info.add_argument("src")
    sp_info.set_defaults(func=cmd_savepoint_info)
    sp_list = savepoint_sub.add_parser("list", help="the savepoints in state.savepoint_dir, newest first, as JSON")
    sp_list.add_argument("root", nargs="?", help="another savepoint directory or s3:// prefix")
    sp_list.add_argument("--config", help="TOML configuration file")
    sp_list.set_defaults(func=cmd_savepoint_list)
    sp_prune = savepoint_sub.add_parser(
        "prune", help="delete all but the newest N complete savepoints (retention)",
        description="Keeps the newest --keep complete savepoints of state.savepoint_dir and deletes the older "
                    "ones, manifest first; incomplete ones (no manifest: being written) are left alone.")
    sp_prune.add_argument("root", nargs="?", help="another savepoint directory or s3:// prefix")
    sp_prune.add_argument("--keep", type=int, required=True, help="how many of the newest to keep (at least 1)")
    sp_prune.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    sp_prune.add_argument("--config", help="TOML configuration file")
    sp_prune.set_defaults(func=cmd_savepoint_prune)
    sp_reshard = savepoint_sub.add_parser("reshard", help="a copy of SRC with another shard count (offline)")
    sp_reshard.add_argument("src")
    sp_reshard.add_argument("dest", help="a new directory")
    sp_reshard.add_argument("--shards", type=int, required=True, help="the new shard count")
    sp_reshard.set_defaults(func=cmd_savepoint_reshard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head -1`): nothing left to say to it. Quietly, with the status a
        # shell gives a process stopped by SIGPIPE; stdout goes to /dev/null so the exit flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit:
        raise
    except BaseException as exc:  # one line with the root cause, no traceback: the CLI contract
        from nextclick.operators.infra.failures import announce_fatal, one_line, root_cause

        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        announce_fatal(one_line(exc), type(root_cause(exc)).__name__)
        return 1


def entry() -> None:
    """The `nextclick` script and `python -m nextclick`. A process that ran a flow ends with os._exit
    once its output is flushed: the interpreter's teardown ends daemon threads that may be inside
    librdkafka or RocksDB, which can abort a failed run ("FATAL: exception not rethrown", SIGABRT or
    SIGSEGV) in place of its exit status. Skipping it loses nothing: every epoch's effect was committed,
    or is replayed, exactly as after SIGKILL."""
    code = main()
    runner = sys.modules.get("nextclick.flows.runner")
    if runner is not None and runner.FLOW_PROCESS.is_set():
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

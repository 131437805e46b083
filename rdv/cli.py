"""``rdv``: the command line of rendezvous-flink."""

from __future__ import annotations

import argparse
import sys

from rdv.platform import Platform, PlatformError


def _cmd_up(args: argparse.Namespace) -> int:
    p = Platform()
    p.up()
    return _cmd_status(args)


def _cmd_down(args: argparse.Namespace) -> int:
    Platform().down()
    print("platform stopped: no process left, ports released")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    services = Platform().status()
    for s in services:
        state = "up" if s.running else "down"
        print(f"{s.name:<6} {state:<5} {s.address:<24} {s.detail}")
    return 0 if all(s.running for s in services) else 1


def _cmd_job(args: argparse.Namespace) -> int:
    from rdv import jobctl

    if args.job_cmd == "submit":
        job_id = jobctl.submit(args.name, args.job_args)
        print(job_id)
    elif args.job_cmd == "list":
        for j in jobctl.list_jobs():
            print(f"{j['id']}  {j['state']:<10} {j['name']}")
    elif args.job_cmd == "cancel":
        jobctl.cancel(args.job_id)
        print(f"cancelled {args.job_id}")
    elif args.job_cmd == "savepoint":
        print(jobctl.savepoint(args.job_id, stop=args.stop))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdv", description="rendezvous-flink: run many models on the same live input."
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("up", help="start local Kafka + Flink and create topics").set_defaults(
        func=_cmd_up
    )
    sub.add_parser("down", help="stop the local platform").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="show each service and its address").set_defaults(
        func=_cmd_status
    )

    job = sub.add_parser("job", help="submit, list, cancel or savepoint Flink jobs")
    jsub = job.add_subparsers(dest="job_cmd", required=True, metavar="ACTION")
    js = jsub.add_parser("submit", help="submit a job of jobs/ to the cluster")
    js.add_argument("name", help="job module in jobs/, e.g. passthrough")
    js.add_argument("job_args", nargs=argparse.REMAINDER, help="arguments for the job")
    jsub.add_parser("list", help="list jobs")
    jc = jsub.add_parser("cancel", help="cancel a job")
    jc.add_argument("job_id")
    jsp = jsub.add_parser("savepoint", help="take a savepoint of a job")
    jsp.add_argument("job_id")
    jsp.add_argument("--stop", action="store_true", help="stop the job with the savepoint")
    job.set_defaults(func=_cmd_job)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PlatformError as e:
        print(f"rdv: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""algd-reset: clear a latched STOP as the operator (challenge-response with the operator key).

    algd-reset --init-key                    create the operator key (mode 600) once
    algd-reset                               reset /algd/controller and /algd/monitor
    algd-reset --namespace robot1 --node monitor

For each node: ask ~/reset_challenge for a fresh nonce, send HMAC(key, node, nonce) on
~/reset, and print the node's answer from ~/reset_result. Exit status 0 when every node
accepted, 1 when one refused, 3 when one did not answer. Discovery stays on this machine
unless ROS_AUTOMATIC_DISCOVERY_RANGE says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from algd_runtime.contract.keys import OperatorKeyError, create_key, default_key_path, load_key
from algd_runtime.deploy.safety import reset_proof


CHALLENGE_RETRY_S = 1.0


def operator_reset(namespace: str, nodes: Sequence[str], key: bytes, timeout_s: float = 5.0,
                   node=None) -> dict[str, tuple[str, str]]:
    """{node: (outcome, message)} with outcome "ok", "refused" or "timeout". node: an rclpy
    node that another thread spins (the fault bench's probe) to reset from, instead of a
    participant of its own: a new participant beside another in one process stalled the
    graph up to 0.4 s, and one right after a monitor's restart got no challenge in 10 s."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from algd_runtime.ros import messages as m

    ns = "/" + namespace.strip("/")
    own = node is None
    if own:
        ctx = Context()
        rclpy.init(context=ctx)
        node = rclpy.create_node(f"algd_reset_{os.getpid()}", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
    made: list = []  # on a borrowed node: what destroys each entity made here, at the end

    def spin_until(done, deadline: float) -> bool:
        while not done() and time.monotonic() < deadline:
            if own:
                ex.spin_once(timeout_sec=0.02)
            else:
                time.sleep(0.01)
        return done()

    out = {}
    try:
        for name in nodes:
            fqn = f"{ns}/{name}".replace("//", "/")
            deadline = time.monotonic() + timeout_s
            client = node.create_client(Trigger, f"{fqn}/reset_challenge")
            made.append(lambda c=client: node.destroy_client(c))
            if not client.wait_for_service(timeout_sec=timeout_s):
                out[name] = ("timeout", f"no service {fqn}/reset_challenge within {timeout_s:g} s (is it running?)")
                continue
            # Asked again each CHALLENGE_RETRY_S: a service drops its response when it has not
            # yet discovered this client's reader (rmw_fastrtps waits 100 ms for it), and a
            # challenge is only a nonce, so asking twice costs nothing.
            future = None
            while time.monotonic() < deadline and not (future and future.done()):
                if future is not None:
                    client.remove_pending_request(future)
                future = client.call_async(Trigger.Request())
                spin_until(future.done, min(deadline, time.monotonic() + CHALLENGE_RETRY_S))
            if not future.done():
                out[name] = ("timeout", f"no challenge from {fqn} within {timeout_s:g} s")
                continue
            challenge = json.loads(future.result().message)
            nonce = challenge["nonce"]
            results: list[dict] = []
            # Latched on the node's side: a result published before discovery matched this
            # reader still reaches it.
            sub = node.create_subscription(String, f"{fqn}/reset_result",
                                           lambda msg: results.append(json.loads(msg.data)), m.RESULTS)
            pub = node.create_publisher(String, f"{fqn}/reset", m.RELIABLE)
            made += [lambda s=sub: node.destroy_subscription(s), lambda p=pub: node.destroy_publisher(p)]
            spin_until(lambda: pub.get_subscription_count() > 0, deadline)
            pub.publish(String(data=json.dumps({"nonce": nonce, "proof": reset_proof(key, challenge["node"], nonce)})))
            mine = lambda: [r for r in results if r.get("nonce") == nonce]  # noqa: E731
            if not spin_until(lambda: bool(mine()), deadline):
                out[name] = ("timeout", f"no answer on {fqn}/reset_result within {timeout_s:g} s")
                continue
            r = mine()[0]
            out[name] = ("ok" if r["ok"] else "refused", r["message"])
    finally:
        if own:
            ex.shutdown()
            node.destroy_node()
            ctx.try_shutdown()
        else:
            for destroy in made:
                destroy()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="algd-reset", description=__doc__.splitlines()[0])
    p.add_argument("--init-key", nargs="?", const="", metavar="PATH",
                   help=f"create the operator key file (default {default_key_path()}) and exit")
    p.add_argument("--namespace", default="algd")
    p.add_argument("--node", action="append", help="node(s) to reset (default: controller and monitor)")
    p.add_argument("--key", type=Path, help=f"operator key file (default {default_key_path()}, or $ALGD_OPERATOR_KEY)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each node")
    args = p.parse_args(argv)
    if args.init_key is not None:
        path = Path(args.init_key or default_key_path()).expanduser()
        if path.exists():
            print(f"error: {path} exists; a key is never overwritten (delete it first to replace it)", file=sys.stderr)
            return 2
        print(f"created {create_key(path)} (mode 600): give it to the controller and monitor as "
              f"operator_key_file, and keep it from anyone who must not clear a STOP")
        return 0
    try:
        key = load_key(args.key or default_key_path())
    except OperatorKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    results = operator_reset(args.namespace, args.node or ["controller", "monitor"], key, args.timeout)
    for name, (outcome, message) in results.items():
        print(f"{name}: {outcome}: {message}")
    if any(o == "timeout" for o, _ in results.values()):
        return 3
    return 0 if all(o == "ok" for o, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The operator's reset on a node: challenge service, proof topic, result topic.

    ~/reset_challenge  std_srvs/Trigger: reply message JSON {"node", "nonce", "ttl_s"}
    ~/reset            std_msgs/String JSON {"nonce", "proof"}: proof = HMAC(operator key,
                       "reset", node, nonce) (safety.reset_proof); each nonce works once
    ~/reset_result     std_msgs/String JSON {"nonce", "ok", "message"}

std_srvs has no service with a request payload, hence a topic for the proof. algd-reset is
the client. An unauthenticated message, a replayed proof or a proof for another node is
refused and logged; nothing else (no parameter, no e-stop message) clears a STOP.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger

from algd_runtime.ros import messages as m
from algd_runtime.deploy.safety import ResetAuthority


class ResetEndpoint:
    def __init__(self, node: Node, on_reset: Callable[[], str], key: bytes | None = None) -> None:
        """on_reset: clears the node's STOP once the proof verified; returns what it did.
        Without a key (a managed node before configure) every request is refused."""
        self.node, self.on_reset = node, on_reset
        self.authority: ResetAuthority | None = None
        self.set_key(key)
        self.refused = 0
        self.result = node.create_publisher(String, m.RESET_RESULT, **m.endpoint(m.RESULTS, True))
        node.create_subscription(String, m.RESET, self._on_request, **m.endpoint(m.RELIABLE, False))
        node.create_service(Trigger, m.RESET_CHALLENGE, self._on_challenge)

    def set_key(self, key: bytes | None) -> None:
        self.authority = ResetAuthority(key, self.node.get_fully_qualified_name()) if key else None

    def _on_challenge(self, request, response):
        if self.authority is None:
            response.success, response.message = False, "not configured: no operator key loaded"
            return response
        response.success = True
        response.message = json.dumps({"node": self.node.get_fully_qualified_name(),
                                       "nonce": self.authority.challenge(time.monotonic()),
                                       "ttl_s": self.authority.ttl_s})
        return response

    def _on_request(self, msg: String) -> None:
        nonce, why = "", None
        try:
            req = json.loads(msg.data)
            nonce, proof = str(req["nonce"]), str(req["proof"])
        except (ValueError, KeyError, TypeError):
            why = 'expected JSON {"nonce", "proof"} (use algd-reset)'
        else:
            why = (self.authority.verify(nonce, proof, time.monotonic()) if self.authority is not None
                   else "not configured: no operator key loaded")
        if why:
            self.refused += 1
            self.node.get_logger().warning(f"operator reset refused: {why}")
            text = f"refused: {why}"
        else:
            text = self.on_reset()
            self.node.get_logger().warning(f"operator reset: {text}")
        self.result.publish(String(data=json.dumps({"nonce": nonce, "ok": why is None, "message": text})))

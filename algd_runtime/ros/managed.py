"""What the controller and the monitor share as managed (lifecycle) nodes: a configure that
fails with its reason instead of a traceback, a shutdown that deactivates first, and
autostart."""

from __future__ import annotations

from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn


class ManagedNode(LifecycleNode):
    """Subclasses load and check everything in _configure() (a ValueError or OSError is the
    reason it fails) and stop their active-state timers in _stop_timers()."""

    configure_error = ""

    def _configure(self) -> None:
        raise NotImplementedError

    def _stop_timers(self) -> None:
        raise NotImplementedError

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ValueError, OSError) as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        return super().on_configure(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        if state.label == "active":
            self.on_deactivate(state)
        self._stop_timers()
        return super().on_shutdown(state)

    def latched(self) -> dict[str, str]:
        """The STOP reasons a fresh process must latch again after a suspension (ros/suspend.py); a
        node that keeps its latch on disk returns none."""
        return {}

    def _refuse(self, reason: str) -> SetParametersResult:
        """A refused parameter change: logged, and the reason goes back to the caller."""
        self.get_logger().warning(f"parameter change refused: {reason}")
        return SetParametersResult(successful=False, reason=reason)

    def autostart(self) -> None:
        """Configure, then activate (the `autostart` parameter); a failure destroys the node
        and raises ValueError with its reason, so that the process ends with it."""
        failed = None
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            failed = self.configure_error or f"{self.get_name()}: configure failed"
        elif self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            failed = f"{self.get_name()}: activate failed"
        if failed:
            self.destroy_node()
            raise ValueError(failed)

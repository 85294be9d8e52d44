"""Recorded runs as learning data: a monitor's MCAP log back into transitions.

The robot's `step` messages are whole transitions (messages.STEP_FIELDS: reward, cost,
flags, episode, t, the action applied and the next observation) and each episode's "start"
event carries its first observation, so the log alone rebuilds (obs, action, reward, cost,
next_obs, done) for every step. A step whose previous observation is unknown (its episode's
start went out before the recorder joined, or a message is missing) is skipped, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from algd_runtime.learn.replay import ReplayBuffer
from algd_runtime.ros import messages as m


@dataclass
class LoggedTransition:
    episode: int
    t: int
    obs: np.ndarray
    action: np.ndarray
    reward: float
    cost: float
    next_obs: np.ndarray
    terminated: bool


def read_transitions(path: str | Path, obs_dim: int, act_dim: int) -> tuple[list[LoggedTransition], int]:
    """(the transitions in log order, how many steps were skipped) from an MCAP log."""
    from mcap_ros2.reader import read_ros2_messages

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MCAP log")
    out, skipped = [], 0
    last: dict[int, tuple[int, np.ndarray]] = {}  # episode -> (t, observation after step t)
    try:
        for rec in read_ros2_messages(str(path), topics=[m.STEP, m.EPISODE]):
            msg = rec.ros_msg
            if rec.channel.topic == m.EPISODE:
                event = json.loads(msg.data)
                if event.get("event") == "start" and "observation" in event:
                    last[int(event["index"])] = (0, np.asarray(event["observation"], np.float32))
                continue
            try:
                st = m.parse_step(msg, act_dim, obs_dim)
            except ValueError:
                skipped += 1  # reward and cost only: nothing to learn from
                continue
            prev = last.get(st.episode)
            if prev is None or prev[0] != st.t - 1 or prev[1].shape != (obs_dim,):
                skipped += 1
                last.pop(st.episode, None)
                continue
            out.append(LoggedTransition(st.episode, st.t, prev[1], st.action, st.reward, st.cost, st.next_obs,
                                        st.terminated))
            last[st.episode] = (st.t, st.next_obs)
    except Exception as exc:  # mcap raises several kinds for a torn or foreign file
        if isinstance(exc, (FileNotFoundError, ValueError)):
            raise
        raise ValueError(f"{path}: not a readable MCAP log of ROS 2 messages ({type(exc).__name__}: {exc})") from None
    return out, skipped


def add_mcap_to_replay(path: str | Path, replay: ReplayBuffer, spec) -> int:
    """Append the log's transitions to `replay`; returns how many."""
    transitions, _ = read_transitions(path, spec.obs_dim, spec.act_dim)
    for tr in transitions:
        replay.add(tr.obs, tr.action, tr.reward, tr.cost, tr.next_obs, tr.terminated)
    return len(transitions)

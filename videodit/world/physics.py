"""SynthWorld physics: the constants of the SynthWorld spec and closed-form trajectories.

Units: world units (1 = canvas height H), seconds. y grows downward; the floor is y = 1, and an
object touches it when its centre is at ``1 - down`` (``down`` = centre-to-bottom extent).

Every coordinate is a piecewise-quadratic function of time (a ``Track``), evaluated in closed form
at t = k / FPS, never integrated step by step: a drop from rest follows y0 + G t^2 / 2 to float
precision, and a bounce or collision starts a new piece at the exact event time.

Choices where the spec is silent:
- Constant-speed motions (left/right/up/down) and still objects float: gravity acts only on
  "falls", "bounces" and "thrown_*" objects.
- The floor is frictionless. A thrown object keeps its horizontal velocity after landing and
  bounces with RESTITUTION like any dropped ball; "falls" lands and stops dead.
- A bounce sequence with restitution 0.8 would, ideally, make infinitely many ever-smaller bounces
  in finite time. A rebound whose flight would be shorter than one frame interval (1 / FPS) can
  never be seen, so the object comes to rest on the floor instead (REST_SPEED below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

G = 2.0                     # gravity, H / s^2, downward (+y)
SPEEDS = {"slowly": 0.15, "normal": 0.30, "quickly": 0.50}   # H / s
RESTITUTION = 0.8           # rebound speed / impact speed on the floor
SIZES = {"small": 0.14, "large": 0.24}                       # H: circle diameter, square side, triangle side / 1.1
FPS = 8

REST_SPEED = G / (2 * FPS)  # rebound speed whose flight (2 v / G) lasts exactly one frame interval


@dataclass(frozen=True)
class Track:
    """One coordinate over time. Piece i starts at ``times[i]`` with position ``pos[i]``, velocity
    ``vel[i]`` and constant acceleration ``acc[i]``; it lasts until the next piece starts."""

    times: tuple[float, ...]
    pos: tuple[float, ...]
    vel: tuple[float, ...]
    acc: tuple[float, ...]

    def _piece(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.searchsorted(np.asarray(self.times), t, side="right") - 1
        return i, t - np.asarray(self.times)[i]

    def at(self, t: np.ndarray) -> np.ndarray:
        """Position at times ``t`` (any shape, seconds >= 0)."""
        t = np.asarray(t, dtype=np.float64)
        i, dt = self._piece(t)
        return np.asarray(self.pos)[i] + np.asarray(self.vel)[i] * dt + 0.5 * np.asarray(self.acc)[i] * dt * dt

    def velocity(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        i, dt = self._piece(t)
        return np.asarray(self.vel)[i] + np.asarray(self.acc)[i] * dt


def uniform(p0: float, v: float) -> Track:
    """Constant velocity ``v`` from ``p0`` (v = 0: still)."""
    return Track((0.0,), (p0,), (v,), (0.0,))


def floor_bounces(y0: float, vy0: float, y_floor: float, restitution: float, t_end: float) -> tuple[Track, list[float]]:
    """Free flight under G from (y0, vy0) with floor impacts at ``y_floor``, up to ``t_end``.

    Each impact reverses the vertical velocity and scales it by ``restitution``; once the rebound
    would be slower than REST_SPEED (always, for restitution 0) the object rests on the floor.
    Returns the track and the times of the impacts that rebound (the bounces).
    """
    times, pos, vel, acc = [0.0], [y0], [vy0], [G]
    bounces: list[float] = []
    t, y, v = 0.0, y0, vy0
    while True:
        # Solve y + v dt + G dt^2 / 2 = y_floor for the later root; the impact speed is v + G dt.
        v_hit = math.sqrt(v * v + 2.0 * G * (y_floor - y))
        t_hit = t + (v_hit - v) / G
        if t_hit > t_end:
            break
        v_out = restitution * v_hit
        if v_out < REST_SPEED:
            times.append(t_hit), pos.append(y_floor), vel.append(0.0), acc.append(0.0)
            break
        bounces.append(t_hit)
        times.append(t_hit), pos.append(y_floor), vel.append(-v_out), acc.append(G)
        t, y, v = t_hit, y_floor, -v_out
    return Track(tuple(times), tuple(pos), tuple(vel), tuple(acc)), bounces


def head_on_collision(x_contact: float, radius: float, v_left: float, v_right: float,
                      t_contact: float) -> tuple[Track, Track]:
    """x tracks of two equal-mass balls that touch at ``x_contact`` at time ``t_contact``.

    The left ball moves right at ``v_left`` > 0 and the right ball left at ``v_right`` > 0. A
    perfectly elastic head-on collision of equal masses exchanges the velocities, so afterwards
    the left ball moves left at ``v_right`` and the right ball moves right at ``v_left``.
    """
    xl_c, xr_c = x_contact - radius, x_contact + radius
    left = Track((0.0, t_contact), (xl_c - v_left * t_contact, xl_c), (v_left, -v_right), (0.0, 0.0))
    right = Track((0.0, t_contact), (xr_c + v_right * t_contact, xr_c), (-v_right, v_left), (0.0, 0.0))
    return left, right

"""Rewards: the interface, checks, and built-in rewards."""

from didr.rewards.base import Reward, call_reward, is_differentiable, reward_name
from didr.rewards.toy import LinearReward, SigmoidReward, StepReward, parse_toy_reward

__all__ = ["Reward", "call_reward", "is_differentiable", "reward_name", "LinearReward", "SigmoidReward", "StepReward", "parse_toy_reward"]

"""`posttrain demo`'s parts: the demo's own lm-eval task and the tiny model trained on it."""

from posttrain.demo._task import TASK_NAME, DemoTask, make_items, read_items, write_demo_task
from posttrain.demo._train import DemoCheckpoints, train_demo_model

__all__ = ["TASK_NAME", "DemoCheckpoints", "DemoTask", "make_items", "read_items", "train_demo_model",
           "write_demo_task"]

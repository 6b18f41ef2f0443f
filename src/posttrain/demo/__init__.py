"""`posttrain demo`'s parts: the demo's own lm-eval task, the tiny model trained on it, and the run
that ties them to the watcher and the pipeline."""

from posttrain.demo._run import DemoResult, run_demo, write_demo_config
from posttrain.demo._task import TASK_NAME, DemoTask, make_items, read_items, write_demo_task
from posttrain.demo._train import DEFAULT_STEPS, DemoCheckpoints, train_demo_model

__all__ = ["DEFAULT_STEPS", "TASK_NAME", "DemoCheckpoints", "DemoResult", "DemoTask", "make_items", "read_items", "run_demo",
           "train_demo_model", "write_demo_config", "write_demo_task"]

"""`pipelines`: the command line. A thin layer over the task registry and pipelines.run."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from pipelines.errors import PipelineError
from pipelines.registry import TASKS, get_task

COMMON_OPTIONS = [
    click.Option(["--epochs"], type=click.IntRange(1), default=None,
                 help="Training epochs [default: the task's, printed with the schedule]."),
    click.Option(["--lr"], type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Base learning rate for fit_one_cycle [default: the task's]."),
    click.Option(["--batch-size"], type=click.IntRange(1), default=None,
                 help="Batch size [default: the task's: 64, or 8 for unet as the book]."),
    click.Option(["--seed"], type=int, default=42, show_default=True, help="Seed for splits, pairs and weights."),
    click.Option(["--output"], type=click.Path(path_type=Path), default=None,
                 help="New folder for this run's files [default: artifacts/TASK/TIMESTAMP]. Never overwritten."),
    click.Option(["--register/--no-register"], default=True, show_default=True,
                 help="Save into the BentoML model store (only ever after parity passed)."),
    click.Option(["--distributed"], is_flag=True, default=False,
                 help="Data-parallel training (fastai distrib_ctx) across the processes `accelerate launch` or `torchrun` starts; "
                      "the first process alone exports, checks parity and registers. Needs the `distributed` extra."),
]


def report_errors(function, debug: bool):
    """Run a command; user-facing failures become one line on stderr and a non-zero exit."""
    from export.errors import ExportError
    from services.runtime import ProviderUnavailableError

    try:
        return function()
    except (PipelineError, ProviderUnavailableError) as error:
        raise click.ClickException(str(error)) from None
    except ExportError as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was registered", err=True)
        sys.exit(130)
    except Exception as error:
        if debug:
            raise
        raise click.ClickException(
            f"unexpected {type(error).__name__}: {error} (rerun with PIPELINES_DEBUG=1 for the traceback)"
        ) from None


def task_command(name: str) -> click.Command:
    task_class = TASKS[name]

    def run(**options):
        from pipelines.run import train_and_export

        debug = bool(os.environ.get("PIPELINES_DEBUG"))
        result = report_errors(lambda: train_and_export(get_task(name), options), debug)
        if result is None:  # a secondary process of a distributed run: process 0 exports
            return
        click.echo(f"artifacts: {result.output_dir}")
        if result.tag:
            click.echo(f"serve it:  bentoml serve services.{name}:{name.capitalize()}Service  (model {result.tag})")

    return click.Command(
        name, callback=run, params=[*task_class.cli_options(), *COMMON_OPTIONS],
        help=f"Train the {name} task ({task_class.summary}), export to ONNX, prove parity, register.",
    )


class TaskGroup(click.Group):
    """One subcommand per registered task; an unknown task is a one-line error naming the known ones."""

    def list_commands(self, ctx):
        return sorted(TASKS)

    def get_command(self, ctx, name):
        return task_command(name) if name in TASKS else None

    def resolve_command(self, ctx, args):
        if args and args[0] not in TASKS and not args[0].startswith("-"):
            raise click.UsageError(f"unknown task {args[0]!r}; known tasks: {', '.join(sorted(TASKS))}", ctx)
        return super().resolve_command(ctx, args)


# fastai's import triggers torch's own deprecation notice for torch.jit.script; it says nothing to our users.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)


@click.group(help="Train fastai models, export them to ONNX with a parity proof, and serve them with BentoML.")
@click.version_option(package_name="fastai-onnx-pipelines")
def main():
    pass


@main.group("train-and-export", cls=TaskGroup)
def train_and_export_group():
    """Train a task with fastai, export it to ONNX, check parity, save it into the BentoML model store."""


@main.command("tasks")
def list_tasks():
    """List the registered tasks."""
    for name in sorted(TASKS):
        click.echo(f"{name:<10} {TASKS[name].summary}")


if __name__ == "__main__":
    main()

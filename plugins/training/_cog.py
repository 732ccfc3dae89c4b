"""/train now | status | history and /student versions | rollback, plus the nightly schedule.

Both groups carry default_permissions(manage_guild): Discord only hides top-level commands,
so the whole group is hidden from members without Manage Server until an admin allows it
(Server Settings → Integrations; e.g. for the curator role). /train now and /student rollback
also check for a curator at run time, because those overrides can open a group to anyone.
"""

from __future__ import annotations

import asyncio
import logging
import os

import discord
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from discord import app_commands
from discord.ext import commands

from app import AppContext
from plugins.common.context import NO_MENTIONS
from plugins.common.text import shorten
from plugins.training import report
from plugins.training.choices import parse_version, student_choices, version_choices
from plugins.training.progress import EDIT_INTERVAL, render_progress
from plugins.training.running import LiveRun, run_training
from plugins.voting.ballots import curator_rule, is_curator
from settings import ConfigError
from storage import training as tq
from trainer import job, schedule

log = logging.getLogger(__name__)

NO_SCHEDULER_ENV = "CLASSROOM_NO_SCHEDULER"  # "1": this process runs no nightly job (tests, a second bot)
CURATOR_TOOLS = discord.Permissions(manage_guild=True)


class TrainingCog(commands.Cog):
    """Starts training runs (by command or by the nightly schedule), shows their progress, and switches adapters."""

    train = app_commands.Group(
        name="train", description="Train the student on approved lessons", guild_only=True,
        default_permissions=CURATOR_TOOLS,
    )
    # Public on purpose: members may see versions and report cards. Discord applies
    # default_permissions only to whole groups, so /student rollback relies on its run-time
    # curator check, while the /train group stays hidden from non-curators.
    student_group = app_commands.Group(
        name="student", description="The student's adapter versions and report card", guild_only=True,
    )

    def __init__(self, bot: commands.Bot, app: AppContext, *, interval: float = EDIT_INTERVAL):
        self.bot = bot
        self.app = app
        self.interval = interval
        self.live: LiveRun | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.schedule_off: str | None = None  # why there is no nightly run, when there isn't
        super().__init__()

    # ---- lifetime

    async def cog_load(self) -> None:
        """Start the nightly schedule (unless switched off for this process)."""
        if os.environ.get(NO_SCHEDULER_ENV) == "1":
            self.schedule_off = f"switched off in this process ({NO_SCHEDULER_ENV}=1)"
            log.info("nightly training %s", self.schedule_off)
            return
        try:
            self.scheduler = schedule.start_scheduler(
                self.app.settings.training, self.app.settings.home / "jobs.sqlite", self._nightly
            )
        except ConfigError as e:
            self.schedule_off = str(e)
            log.error("nightly training is off: %s", e)

    async def cog_unload(self) -> None:
        """Cancel a run in progress (its subprocess is killed, the run marked interrupted), then stop the schedule."""
        live = self.live
        if live is not None and live.task is not None:
            live.task.cancel()
            await asyncio.gather(live.task, return_exceptions=True)
        if self.scheduler is not None:
            schedule.stop_scheduler(self.scheduler)
            self.scheduler = None

    # ---- /train

    @train.command(name="now", description="Train now on newly approved lessons (curators)")
    @app_commands.describe(student="The student to train (default: every trainable student)")
    async def train_now(self, interaction: discord.Interaction, student: str | None = None) -> None:
        """Start the nightly job now, in the background; progress shows in the report channel or here."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not is_curator(interaction.user, self.app.settings):
            await _tell(interaction, f"Only curators can start training ({curator_rule(self.app.settings)}).")
            return
        students, problem = self._students(student)
        if problem is None:
            problem = await self._busy()
        if problem is not None:
            await _tell(interaction, problem)
            return
        channel = await self._report_channel() or interaction.channel
        if self.live is not None:  # another /train now got in while we looked things up
            await _tell(interaction, "A training run is already in progress; `/train status` shows it.")
            return
        assert isinstance(channel, discord.abc.Messageable)
        self._launch(LiveRun(students, "manual", interaction.user.id, channel))
        log.info("member %s started training %s", interaction.user.id, students)
        where = getattr(channel, "mention", "this channel")
        names = ", ".join(f"`{s}`" for s in students)
        await _tell(interaction, f"Training {names} started. Progress and the report will show in {where}.")

    @train.command(name="status", description="The training run in progress, or the last one, and the next nightly run")
    async def train_status(self, interaction: discord.Interaction) -> None:
        """Progress of the run in progress (or the last run's outcome) and when the next one is."""
        await interaction.response.defer(ephemeral=True)
        parts: list[str] = []
        live = self.live
        if live is not None and live.state is not None:
            parts.append(render_progress(live.state))
            rest = live.students[live.students.index(live.state.student) + 1 :]
            if rest:
                parts.append("Then: " + ", ".join(f"`{s}`" for s in rest))
        else:
            runs = await self.app.store.call(tq.list_runs, None, 10)
            elsewhere = [r for r in runs if r["status"] == "running"]
            if elsewhere:
                parts += [f"⏳ Training `{r['student']}` (run #{r['id']}, started {report.when(r['started_at'], 'R')}) "
                          "in another process, such as the CLI." for r in elsewhere]
            elif runs:
                parts.append("**Last run**\n" + report.run_line(runs[0]))
            else:
                parts.append("No training runs yet.")
        parts.append(self._next_run())
        await _tell(interaction, "\n\n".join(parts))

    @train.command(name="history", description="Recent training runs: outcome, data, time and scores")
    @app_commands.describe(student="Only this student's runs")
    async def train_history(self, interaction: discord.Interaction, student: str | None = None) -> None:
        """The ten most recent runs."""
        await interaction.response.defer(ephemeral=True)
        runs = await self.app.store.call(tq.list_runs, student, 10)
        if not runs:
            await _tell(interaction, "No training runs yet. Curators can start one with `/train now`.")
            return
        embed = discord.Embed(title="Training runs", description=report.fit("\n".join(report.run_line(r) for r in runs)))
        embed.set_footer(text="Scores: held-out quiz and control set, before → after. " + self._next_run(plain=True))
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # ---- /student

    @student_group.command(name="versions", description="A student's adapter versions with their scores and status")
    @app_commands.describe(student="The student (default: the server's default student)")
    async def student_versions(self, interaction: discord.Interaction, student: str | None = None) -> None:
        """The adapter lineage, oldest first."""
        await interaction.response.defer(ephemeral=True)
        students, problem = self._students(student or self.app.settings.default_student)
        if problem is not None:
            await _tell(interaction, problem)
            return
        name = students[0]
        adapters = await self.app.store.call(tq.adapters, name)
        title = f"{self.app.models.spec(name).display_name} (`{name}`): adapter versions"
        if not adapters:
            await _tell(interaction, f"**{title}**\nNone yet: it speaks with its base weights.")
            return
        shares = await self.app.store.call(tq.teacher_shares, name)
        embed = discord.Embed(title=shorten(title, 256), description=report.fit(report.lineage_text(adapters, shares)))
        embed.set_footer(text="/student rollback switches the live adapter (curators).")
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @student_group.command(name="rollback", description="Switch the live adapter to an earlier version or base (curators)")
    @app_commands.describe(version="A version number like 3, or base", student="The student (default: the server's default student)")
    async def student_rollback(self, interaction: discord.Interaction, version: str, student: str | None = None) -> None:
        """Make an earlier adapter (or the base weights) the live one."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        settings = self.app.settings
        if not is_curator(interaction.user, settings):
            await _tell(interaction, f"Only curators can switch the student's adapter ({curator_rule(settings)}).")
            return
        students, problem = self._students(student or settings.default_student)
        try:
            target = parse_version(version)
        except ValueError:
            problem = problem or f"'{shorten(version, 20)}' is not a version: give a number like `3`, or `base`."
            target = None
        if problem is None and self.app.training_lock.locked():
            problem = "A training run is in progress and may promote a new adapter; roll back after it ends."
        if problem is None and target is not None:
            problem = await self._rollback_problem(students[0], target)
        if problem is not None:
            await _tell(interaction, problem)
            return
        name = students[0]
        try:
            row = await job.rollback(self.app, name, target)
        except ValueError as e:
            await _tell(interaction, f"{e}. `/student versions` lists the versions on disk.")
            return
        now = f"adapter v{row['version']}" if row else "its base weights"
        log.info("member %s switched %s to %s", interaction.user.id, name, now)
        await _tell(interaction, f"`{name}` now speaks with {now}.")

    @train_now.autocomplete("student")
    @train_history.autocomplete("student")
    @student_versions.autocomplete("student")
    @student_rollback.autocomplete("student")
    async def _student_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return student_choices(self.app.settings, current)

    @student_rollback.autocomplete("version")
    async def _version_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        name = getattr(interaction.namespace, "student", None) or self.app.settings.default_student
        adapters = await self.app.store.call(tq.adapters, name) if name in self.app.settings.models else []
        return version_choices(adapters, current)

    # ---- helpers

    def _launch(self, live: LiveRun) -> None:
        self.live = live
        live.task = asyncio.create_task(self._run(live), name=f"training-{live.trigger}")

    async def _run(self, live: LiveRun) -> None:
        try:
            await run_training(self.app, live, interval=self.interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("training run (%s) for %s failed on the Discord side", live.trigger, live.students)
            if live.channel is not None:
                try:
                    await live.channel.send("❌ Training stopped because of an error on my side; it was logged.")
                except discord.HTTPException as e:
                    log.warning("could not say that training failed: %s", e)
        finally:
            if self.live is live:
                self.live = None

    async def _nightly(self) -> None:
        """The schedule's runner: every trainable student, reporting to the report channel (or only the log)."""
        students = [s.name for s in self.app.settings.students()]
        if not students:
            log.info("nightly training: no trainable students are configured")
            return
        channel = await self._report_channel()
        if channel is None:
            log.info("nightly training: no report channel is configured; reporting to the log only")
        if self.live is not None:  # checked after the last await, so /train now can't slip in between
            log.info("nightly training skipped: a run is already in progress")
            return
        live = LiveRun(students, "schedule", None, channel)
        self._launch(live)
        assert live.task is not None
        await asyncio.wait({live.task})  # the scheduler sees the job running until it ends; cancellation is ours

    def _students(self, name: str | None) -> tuple[list[str], str | None]:
        """The students a command means (all trainable ones for None), or why the name doesn't fit."""
        trainable = [s.name for s in self.app.settings.students()]
        if not trainable:
            return [], "No trainable students are configured."
        if name is None:
            return trainable, None
        if name not in trainable:
            known = ", ".join(f"`{s}`" for s in trainable)
            return [], f"`{shorten(name, 60)}` is not a trainable student. Students: {known}."
        return [name], None

    async def _busy(self) -> str | None:
        """Why a new run can't start now, or None."""
        live = self.live
        if live is not None or self.app.training_lock.locked():
            stage = f" ({live.state.student}: {live.state.stage})" if live and live.state else ""
            return f"A training run is already in progress{stage}; `/train status` shows it."
        runs = await self.app.store.call(tq.list_runs, None, 10)
        running = [r for r in runs if r["status"] == "running"]
        if running:
            return (f"`{running[0]['student']}` is training in another process (run #{running[0]['id']}); "
                    "try again when it ends.")
        return None

    async def _rollback_problem(self, student: str, version: int) -> str | None:
        """Why `version` can't become live, in a curator's words, or None."""
        row = await self.app.store.call(tq.adapter_by_version, student, version)
        if row is None:
            return f"`{student}` has no adapter v{version}. `/student versions` lists its versions."
        if row["status"] == "deleted":
            keep = self.app.settings.training.keep_adapters
            return (f"Adapter v{version} of `{student}` was deleted from disk (only the newest {keep} are kept), "
                    "so it can't be used again. `/student versions` lists the ones on disk.")
        return None

    async def _report_channel(self) -> discord.abc.Messageable | None:
        """The configured report channel, or None (not configured, or unreachable: logged)."""
        channel_id = self.app.settings.discord.report_channel_id
        if channel_id is None:
            return None
        try:
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
        except discord.HTTPException as e:
            log.warning("the report channel %s is unreachable: %s", channel_id, e)
            return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    def _next_run(self, *, plain: bool = False) -> str:
        """When the nightly job runs next."""
        if self.scheduler is None:
            return f"Nightly training is off: {self.schedule_off or 'not started'}."
        job_ = self.scheduler.get_job(schedule.JOB_ID)
        if job_ is None or job_.next_run_time is None:
            return "No nightly training run is scheduled."
        at = job_.next_run_time
        if plain:
            return f"Next nightly run: {at.strftime('%Y-%m-%d %H:%M %Z')}."
        return f"Next nightly run: {discord.utils.format_dt(at, 'f')} ({discord.utils.format_dt(at, 'R')})."


async def _tell(interaction: discord.Interaction, text: str) -> None:
    """Answer the member privately (every command here defers ephemerally)."""
    await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

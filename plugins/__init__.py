"""discord.py extensions. `EXTENSIONS` is the one list bot.py loads, in order.

Each extension is a package whose `setup()` adds its cog; shared views, personas and
rendering live in `plugins.common`. Add a new feature (say `plugins.training`) by
appending it here.
"""

EXTENSIONS: tuple[str, ...] = (
    "plugins.voting",  # persistent vote and curator buttons, reaction votes
    "plugins.lessons",  # /lesson start | stop | list | show
    "plugins.ask",  # /ask and chat by mention
    "plugins.models",  # /models
    "plugins.training",  # /train now | status | history, /student versions | rollback, nightly schedule
    "plugins.quiz",  # /quiz start | stop, votes and corrections on quiz answers, /student report (after training)
    "plugins.privacy",  # /privacy forget-me
)

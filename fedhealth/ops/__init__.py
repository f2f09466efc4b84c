"""Operations an IT department runs: full backups and restores (``backup``, ``restore``,
``archive``, ``crypto``), the backup status the dashboard shows (``status``)."""

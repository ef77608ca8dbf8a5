"""SQLite schema, one migration per version; PRAGMA user_version records how far a database is."""

MIGRATIONS: list[str] = [
    # 1: jobs, runtime limits, workers
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        platform TEXT NOT NULL,
        chat_id TEXT NOT NULL,
        reply_to TEXT,
        user_id TEXT NOT NULL,
        user_name TEXT,
        prompt TEXT NOT NULL,
        params TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        worker TEXT,
        lease_expires_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        progress TEXT,
        error TEXT,
        result TEXT,
        delivered INTEGER NOT NULL DEFAULT 0,
        status_message TEXT
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE INDEX jobs_by_user ON jobs (platform, user_id, state);
    CREATE TABLE limits (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        changed_by TEXT,
        changed_at REAL NOT NULL
    );
    CREATE TABLE workers (
        name TEXT PRIMARY KEY,
        seconds_per_step REAL,
        section_overhead REAL,
        samples INTEGER NOT NULL DEFAULT 0,
        seen_at REAL NOT NULL
    );
    """,
    # 2: each worker's TeaCache ("fast") seconds per step as a fraction of its plain seconds per step
    """
    ALTER TABLE workers ADD COLUMN teacache_factor REAL;
    """,
    # 3: hardening. Delivery: permanent failures recorded, transient ones retried with a growing pause.
    # Workers: why one cannot render now. Notices: what the admins were told, once. Jobs: the Discord
    # server they came from, so a server's moderators act on that server's jobs only.
    """
    ALTER TABLE jobs ADD COLUMN delivery_error TEXT;
    ALTER TABLE jobs ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN next_delivery_at REAL;
    ALTER TABLE jobs ADD COLUMN guild_id TEXT;
    ALTER TABLE workers ADD COLUMN problem TEXT;
    ALTER TABLE workers ADD COLUMN problem_since REAL;
    CREATE TABLE notices (
        key TEXT PRIMARY KEY,
        sent_at REAL NOT NULL
    );
    """,
    # 4: directing the motion. Which pictures besides the start one a job carries (an end picture, keyframes
    # at given seconds), as JSON; their files sit beside the start picture. NULL: the start picture only.
    """
    ALTER TABLE jobs ADD COLUMN guides TEXT;
    """,
    # 5: a worker getting ready (loading and compiling) before its first claim: queued jobs say so
    """
    ALTER TABLE workers ADD COLUMN starting INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: a finished job whose folder (pictures, work folder, video) the retention cleanup deleted, and when;
    # its row stays for the history and /info
    """
    ALTER TABLE jobs ADD COLUMN files_removed_at REAL;
    """,
    # 7: extension jobs. The finished job an extension continues (its kept latents), or the name of the video a
    # person sent (its bytes beside the job's pictures); both NULL: a job made from pictures. The index finds the
    # extensions waiting on a source, which the retention cleanup keeps.
    """
    ALTER TABLE jobs ADD COLUMN extends_job INTEGER;
    ALTER TABLE jobs ADD COLUMN extends_video TEXT;
    CREATE INDEX jobs_by_source ON jobs (extends_job, state);
    """,
    # 8: several machines. jobs.lease numbers the claims of a job: a worker's write carries the number of its
    # claim and is refused once a later claim took the job over (fencing). A delivery is claimed by one frontend
    # process for a while before it posts, so two processes of one bot never post one video twice. Each worker
    # says where it runs (host, GPU, memory plan) for /admin workers.
    """
    ALTER TABLE jobs ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN delivery_claimed_by TEXT;
    ALTER TABLE jobs ADD COLUMN delivery_claim_expires_at REAL;
    ALTER TABLE workers ADD COLUMN host TEXT;
    ALTER TABLE workers ADD COLUMN gpu TEXT;
    ALTER TABLE workers ADD COLUMN plan TEXT;
    """,
]

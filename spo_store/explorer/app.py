"""The explorer's web app (Starlette, Jinja2 with autoescape, no JavaScript) and its server.

Pages (each at a stable URL, GET only): `/`, `/problems`, `/problems/{problem_id}`,
`/trajectories`, `/trajectories/{traj_id}`, `/runs`, `/runs/{run_id}`,
`/runs/{run_id}/steps/{step}`, `/compare?problem_id=`, `/sql?q=` (and `/sql.csv`,
`/sql.parquet`). Unknown ids answer a 404 page, bad input a 400 page naming it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import pyarrow as pa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from spo_store.analyst import check_parquet_schema, csv_chunks, parquet_chunks
from spo_store.errors import SpoError, environment_error
from spo_store.explorer.data import NOT_MODEL_SOURCES, LakeReader, NotFound, ProblemFilter
from spo_store.explorer.render import highlight_code, plot, pygments_css, show_hidden
from spo_store.lake import Lake

HERE = Path(__file__).resolve().parent
SQL_SHOWN_ROWS = 1000  # the HTML table; downloads carry every row
CELL_CHARS = 300
INT64_MAX = 2**63 - 1
# No script may run on any page, inline or loaded: the explorer has none, and a lake text that
# escaped escaping would still be inert. Styles only from the app's own files.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_SQL = (
    "SELECT p.name, count(*) FILTER (t.source = 'human' AND t.reward = 0) AS human_solved,\n"
    "       count(*) FILTER (t.source NOT IN ('human', 'pts') AND t.reward = 0) AS model_solved\n"
    "FROM problems p LEFT JOIN trajectories t USING (problem_id)\n"
    "GROUP BY p.name ORDER BY p.name LIMIT 20"
)


class BadInput(ValueError):
    """A query parameter that cannot mean anything: the app answers 400 naming it."""


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every lake text is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda s: quote(str(s), safe="")  # one path segment
    env.filters["fmt"] = _fmt_cell
    env.filters["model"] = _model_cell
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.0f}%"
    env.filters["num"] = lambda v, d=3: "" if v is None else f"{v:.{d}f}"
    # None and "" mean "any" and are left out; 0 (policy version 0) is kept.
    env.globals["urlencode"] = lambda **kw: urlencode(
        {k: v for k, v in kw.items() if v is not None and v != ""}
    )
    env.globals["highlight"] = highlight_code
    env.globals["plot"] = plot
    env.globals["enumerate"] = enumerate
    env.globals["NOT_MODEL_SOURCES"] = NOT_MODEL_SOURCES
    return env


def _fmt_cell(value: Any, width: int | None = CELL_CHARS) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _model_cell(model_id: str, width: int = 24) -> str:
    """A model id cut to `width` characters, keeping a checkpoint's step: `RUN@STEP` (the
    weights of training run RUN after STEP steps) must not read the same at every step."""
    run, at, step = model_id.rpartition("@")
    if at and step.isdigit() and len(model_id) > width:
        return run[: max(1, width - len(step) - 2)] + "…@" + step
    return _fmt_cell(model_id, width)


def create_app(
    lake: Lake,
    sql_guard: Callable[[str], None],
    *,
    allowed_hosts: list[str] | None = None,
    local_files: bool = True,
) -> Starlette:
    """The explorer over an opened lake. `sql_guard(query)` raises SpoError for a query that
    `spo sql` refuses (the same read-only rule); `allowed_hosts`: Host headers answered (the
    default, loopback names only, keeps other web sites from reading the app through DNS
    rebinding); `local_files=False`: the SQL page reads the lake's tables only, no other
    file of this machine (for a server other machines reach)."""
    reader = LakeReader(lake, sql_guard, local_files=local_files)
    env = _env()
    for name in env.list_templates():  # compiled now, not on the first page that uses one
        env.get_template(name)
    css = pygments_css()

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(lake_uri=lake.uri, **ctx)
        return HTMLResponse(show_hidden(html), status_code=status)

    def arg(request: Request, name: str) -> str | None:
        value = request.query_params.get(name)
        return value.strip() if value and value.strip() else None

    def int_arg(request: Request, name: str, default: int | None = None) -> int | None:
        value = arg(request, name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise BadInput(f"{name}={value!r} is not a whole number") from None
        if not -INT64_MAX <= number <= INT64_MAX:  # the lake's integers are 64-bit
            raise BadInput(f"{name}={value!r} is out of range")
        return number

    def rate_arg(request: Request, name: str) -> float | None:
        value = arg(request, name)
        if value is None:
            return None
        try:
            rate = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
        except ValueError:
            raise BadInput(f"{name}={value!r} is not a number between 0 and 1") from None
        if not 0 <= rate <= 1:
            raise BadInput(f"{name}={value!r} is not between 0 and 1")
        return rate

    def choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
        value = arg(request, name)
        if value is not None and value not in allowed:
            raise BadInput(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value

    def from_elsewhere(request: Request) -> bool:
        """Whether the browser says another site made this request (Fetch Metadata,
        `Sec-Fetch-Site`; sent by every current browser, absent from curl): a page elsewhere
        cannot read our answers (no CORS), but it could make the server run queries."""
        return request.headers.get("sec-fetch-site") in ("cross-site", "same-site")

    # ------------------------------------------------------------------ pages
    def home(request: Request) -> Response:
        return page("home.html", data=reader.overview(), title="Lake")

    def problems(request: Request) -> Response:
        flt = ProblemFilter(
            split=arg(request, "split"),
            platform=arg(request, "platform"),
            judge_issue=arg(request, "judge_issue"),
            human=choice(request, "human", ("yes", "no", "failed")),
            model=choice(request, "model", ("yes", "no", "failed")),
            min_pass=rate_arg(request, "min_pass"),
            max_pass=rate_arg(request, "max_pass"),
            name=arg(request, "name"),
            page=int_arg(request, "page", 1) or 1,
        )
        params = {k: v for k, v in request.query_params.items() if k != "page" and v and v.strip()}
        return page(
            "problems.html",
            title="Problems",
            result=reader.problems(flt),
            choices=reader.problem_choices(),
            f=flt,
            params=params,
        )

    def problem(request: Request) -> Response:
        data = reader.problem(request.path_params["problem_id"])
        return page("problem.html", title=data["problem"]["name"], **data)

    def trajectories(request: Request) -> Response:
        filters = {
            "run_id": arg(request, "run_id"),
            "problem_id": arg(request, "problem_id"),
            "source": arg(request, "source"),
            "policy_version": int_arg(request, "policy_version"),
            "model_id": arg(request, "model_id"),
            "annotated": choice(request, "annotated", ("yes",)) == "yes",
        }
        result = reader.trajectories(**filters, page=int_arg(request, "page", 1) or 1)
        params = {k: v for k, v in filters.items() if v is not None and v is not False}
        if filters["annotated"]:
            params["annotated"] = "yes"
        return page(
            "trajectories.html", title="Trajectories", result=result, f=filters, params=params
        )

    def trajectory(request: Request) -> Response:
        data = reader.trajectory(request.path_params["traj_id"])
        return page("trajectory.html", title=data["row"]["traj_id"], **data)

    def runs(request: Request) -> Response:
        kind, status = arg(request, "kind"), arg(request, "status")
        return page(
            "runs.html",
            title="Runs",
            runs=reader.runs(kind, status),
            kind=kind,
            run_status=status,
        )

    def run(request: Request) -> Response:
        data = reader.run(request.path_params["run_id"])
        return page("run.html", title=data["run"]["run_id"], **data)

    def batch(request: Request) -> Response:
        run_id, step = request.path_params["run_id"], request.path_params["step"]
        if step > INT64_MAX:  # the route takes any digits; steps are 64-bit
            raise NotFound(f"run {run_id!r} logged no batch at step {step}")
        data = reader.batch(run_id, step)
        return page("batch.html", title=f"{run_id} step {step}", run_id=run_id, step=step, **data)

    def compare(request: Request) -> Response:
        problem_id = arg(request, "problem_id")
        if problem_id is None:
            raise BadInput("compare needs ?problem_id=<a problem id> (open one from /problems)")
        data = reader.compare(problem_id, arg(request, "left"), arg(request, "right"))
        return page("compare.html", title="Compare", **data)

    def sql(request: Request) -> Response:
        query = request.query_params.get("q")
        result, cut, error, notice = None, False, None, None
        if query is not None and query.strip() and from_elsewhere(request):
            notice = "This query came from a link on another site and was not run: read it, "
            notice += "then press Run."
        elif query is not None and query.strip():
            try:
                result, cut = reader.sql(query, SQL_SHOWN_ROWS)
            except SpoError as exc:
                error = str(exc)
        return page(
            "sql.html",
            status=400 if error else 200,
            title="SQL",
            query=query if query is not None else DEFAULT_SQL,
            ran=bool(query and query.strip()),
            result=None if result is None else _table_rows(result),
            cut=cut,
            error=error,
            notice=notice,
            shown=SQL_SHOWN_ROWS,
        )

    def sql_download(request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt not in ("csv", "parquet"):
            raise HTTPException(404)
        query = request.query_params.get("q") or ""
        if from_elsewhere(request):
            raise HTTPException(403, "a download runs only from the explorer's own SQL page")
        try:
            schema, batches = reader.sql_stream(query)  # runs it: a failing query says so here
        except SpoError as exc:
            raise BadInput(str(exc)) from exc
        if fmt == "parquet":
            try:
                check_parquet_schema(schema)  # an INTERVAL, say: Parquet has no such type
            except SpoError as exc:
                batches.close()
                raise BadInput(str(exc)) from exc
        # Streamed batch by batch: a result larger than memory downloads in bounded memory.
        if fmt == "parquet":
            body: Iterator[Any] = parquet_chunks(schema, batches)
            media = "application/vnd.apache.parquet"
        else:  # what `spo sql --format csv` prints: every digit, every timestamp's zone
            body = (c.encode() for c in csv_chunks(schema.names, batches))
            media = "text/csv; charset=utf-8"
        headers = {"Content-Disposition": f'attachment; filename="spo-query.{fmt}"'}
        return StreamingResponse(body, media_type=media, headers=headers)

    def pygments_stylesheet(request: Request) -> Response:
        return Response(css, media_type="text/css")

    # ------------------------------------------------------------------ errors
    def not_found(request: Request, exc: Exception) -> Response:
        what = str(exc) if isinstance(exc, NotFound) else f"no page at {request.url.path}"
        return page("error.html", status=404, title="Not found", code=404, message=what)

    def bad_input(request: Request, exc: Exception) -> Response:
        return page("error.html", status=400, title="Bad request", code=400, message=str(exc))

    def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return not_found(request, exc)
        return page(
            "error.html",
            status=exc.status_code,
            title="Error",
            code=exc.status_code,
            message=str(exc.detail),
        )

    def failure(exc: Exception) -> tuple[int, str, str]:
        """(status, title, one line) for an exception no handler took. A lake the explorer
        cannot read (a table removed or damaged under it): 503, and the next request tries
        again (the lake may be restored); anything else is a bug: 500, still one line."""
        reader.reset()
        unreadable = lake_read_error(exc)
        if unreadable is not None:
            return 503, "Lake unreadable", f"cannot read the lake at {lake.uri}: {unreadable}"
        detail = " ".join(str(exc).split())[:300]
        return 500, "Error", f"internal error: {type(exc).__name__}: {detail}"

    class ErrorPages:
        """Any exception no handler took: its error page and one line on stderr (Starlette's
        own last handler would print a traceback after the page)."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            started = False

            async def tracking_send(message: dict[str, Any]) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.app(scope, receive, tracking_send)
            except Exception as exc:
                if scope["type"] != "http":
                    raise
                if started:
                    # a download cut short (the query interrupted or failing mid-way): the
                    # status is sent; ending without the last chunk makes the browser call
                    # the download failed rather than complete
                    print(
                        f"spo lake explorer: {scope['method']} {scope['path']}: download "
                        f"cut short: {' '.join(str(exc).split())[:300]}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return
                status, title, message = failure(exc)
                print(
                    f"spo lake explorer: {scope['method']} {scope['path']}: {status} {message}",
                    file=sys.stderr,
                    flush=True,
                )
                response = page("error.html", status, title=title, code=status, message=message)
                await response(scope, receive, send)

    class SecurityHeaders:
        """Adds the CSP and friends to every response (pages, downloads, static files)."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return

            async def send_with_headers(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
                await send(message)

            request = Request(scope)
            if from_elsewhere(request) and request.headers.get("sec-fetch-mode") != "navigate":
                # An image, script or fetch of another site's page: nothing here is for it
                # (a link followed to a page still opens it).
                refused = page(
                    "error.html",
                    status=403,
                    title="Forbidden",
                    code=403,
                    message="the explorer answers other sites' pages only by a link followed",
                )
                await refused(scope, receive, send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)

    routes = [
        Route("/", home),
        Route("/problems", problems),
        Route("/problems/{problem_id:path}", problem),
        Route("/trajectories", trajectories),
        Route("/trajectories/{traj_id:path}", trajectory),
        Route("/runs", runs),
        Route("/runs/{run_id:path}/steps/{step:int}", batch),
        Route("/runs/{run_id:path}", run),
        Route("/compare", compare),
        Route("/sql", sql),
        Route("/sql.{fmt:str}", sql_download),
        Route("/static/pygments.css", pygments_stylesheet),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK)),
            Middleware(SecurityHeaders),
            Middleware(ErrorPages),
        ],
        exception_handlers={
            NotFound: not_found,
            BadInput: bad_input,
            HTTPException: http_error,
        },
    )
    app.state.reader = reader
    return app


def lake_read_error(exc: BaseException) -> str | None:
    """One line for an exception from reading the lake's files (a table deleted, a data file
    truncated or unreadable while the server runs), else None. Lance raises OSError (missing
    files) or ValueError/RuntimeError naming `LanceError(IO)`; Rust source locations are cut."""
    known = environment_error(exc)
    if known is not None:
        return known
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) or "LanceError" in text:
        detail = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", text)[:300]
        return (
            f"{detail} (a table was removed or damaged while the explorer ran: run "
            "`spo lake verify`; docs/lake.md, 'When the lake is damaged')"
        )
    return None


def _table_rows(table: pa.Table) -> dict[str, Any]:
    return {
        "columns": table.column_names,
        "rows": [list(r.values()) for r in table.to_pylist()],
        "total": table.num_rows,
    }


def serve(
    lake_uri: str | None,
    *,
    host: str,
    port: int,
    sql_guard: Callable[[str], None],
    say: Callable[[str], None] = print,
) -> None:
    """Open the lake read-only, bind `host:port` (0: any free port) and serve until Ctrl-C;
    `say` gets the URL once the socket listens. Raises SpoError for a lake that cannot be
    opened or an address that cannot be bound."""
    lake = Lake.open(lake_uri, create=False)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            fix = "--host is not an address of this machine"
        elif exc.errno == errno.EADDRINUSE:
            fix = "the port is taken: pass another --port (0: any free one)"
        else:
            fix = "pass another --port or --host"
        raise SpoError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    hosts = list(LOOPBACK)
    local = host in LOOPBACK
    if not local:
        # Listening beyond this machine: answer any Host (the user chose to expose it), but
        # let its SQL page read the lake only: `spo sql`'s local file reads (read_text of
        # any file this user may read) would otherwise be open to every machine that reaches it.
        hosts = ["*"]
    app = create_app(lake, sql_guard, allowed_hosts=hosts, local_files=local)
    app.state.reader.warm()  # load the index before the first page is asked
    shown = f"[{host}]" if ":" in host else host
    also = ""
    if host in ("0.0.0.0", "::", ""):
        # Every address: 0.0.0.0 is no address to browse to (browsers refuse it); name one
        # that works here and the one other machines would use.
        shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        also = f"; other machines: http://{socket.gethostname()}:{bound}/"
    say(f"spo lake explorer: http://{shown}:{bound}/  (lake {lake.uri}{also}; Ctrl-C stops it)")
    sys.stdout.flush()
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,  # a browser's keep-alive or a slow download: not forever
    )
    _uvicorn_server(on_exit=app.state.reader.interrupt)(config).run(sockets=[sock])
    say("spo lake explorer stopped")


def _uvicorn_server(on_exit: Callable[[], None]) -> type:
    """uvicorn's Server, stopping on Ctrl-C or SIGTERM without re-raising it, and calling
    `on_exit()` (which stops running queries) when told to stop."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but Ctrl-C or SIGTERM just end it: uvicorn would raise the
        signal again once shut down, and `spo` would then report an interrupted command to
        resume, while a server has nothing to resume."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.stop) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def stop(self, sig: int, frame: Any) -> None:
            self.handle_exit(sig, frame)
            on_exit()

    return Server

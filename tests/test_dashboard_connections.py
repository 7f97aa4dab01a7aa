"""The dashboard's connections table in a real browser: the open connections with links
to /connections/ID, by age or by bytes (the JSON it shows is test_connections.py's)."""

from __future__ import annotations

from typing import Any

from server.observe import dashboard
from tests.conftest import ServerFactory
from tests.test_connections import clients
from tests.test_dashboard import Browser, admin_url, browser  # noqa: F401  (browser: a fixture)

# Resolves with the table's rows at the first connections update where `until` holds.
TABLE_JS = """new Promise((resolve, reject) => {
  const read = () => ({total: document.getElementById("conn-total").textContent,
    rows: [...document.querySelectorAll("#connections tbody tr")].map((tr) =>
      ({cells: [...tr.cells].map((td) => td.textContent), href: tr.querySelector("a").getAttribute("href")}))});
  const until = %s;
  const check = () => { const v = read(); if (until(v)) { clearTimeout(timer); resolve(v); } };
  const timer = setTimeout(() => reject(new Error("timed out; the table shows " + JSON.stringify(read()))), %d);
  addEventListener("connections-update", check);
  check();
})"""


def wait_table(browser: Browser, session: str, until: str, timeout_s: float = 10.0) -> dict[str, Any]:  # noqa: F811
    expression = TABLE_JS % (until, int(timeout_s * 1000))
    result = browser.call(
        "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session
    )
    if "exceptionDetails" in result:
        raise AssertionError(f"{until}: {result['exceptionDetails'].get('exception', {}).get('description')}")
    value: dict[str, Any] = result["result"]["value"]
    return value


def test_the_table_lists_open_connections_and_links_their_json(
    make_server: ServerFactory,
    browser: Browser,  # noqa: F811
) -> None:
    server, _ = make_server(admin_port=0)
    session = browser.open(admin_url(server, "/dashboard"))
    assert wait_table(browser, session, "(v) => v.total === '(0 open)'")["rows"] == []
    with clients(server.server_address[:2], 3, b"x" * 10) as socks:
        socks[1].sendall(b"y" * 5000)
        got = 0
        while got < 5000:
            got += len(socks[1].recv(5000))
        table = wait_table(browser, session, "(v) => v.rows.length === 3")
        assert table["total"] == "(3 open)"
        for row in table["rows"]:
            conn, listener, worker, peer, age, _, _, rtt = row["cells"]
            assert row["href"] == "/connections/" + conn.lstrip("#") and listener == "tcp" and worker == ""
            assert peer.startswith("127.0.0.1:") and age.count(":") == 2 and rtt.endswith(" \u00b5s")
        browser.call(
            "Runtime.evaluate",
            {"expression": "const s = document.getElementById('conn-sort'); s.value = 'bytes'; s.value"},
            session,
        )
        by_bytes = wait_table(browser, session, "(v) => v.rows.length === 3 && v.rows[0].cells[5].includes('KiB')")
        assert by_bytes["rows"][0]["cells"][5] == "4.9 KiB"
    gone = wait_table(browser, session, "(v) => v.rows.length === 0", timeout_s=3 * dashboard.CONN_POLL_MS / 1000)
    assert gone["total"] == "(0 open)"

"""Taking a POST's connection over from aiohttp: all the POST channel needs to
know of aiohttp's internals — all of it, and only in this package.

No other module of the package touches a private attribute of aiohttp. What is
used, per aiohttp version (3.12, 3.13 and 3.14 are supported):

- the request's HTTP parser: ``RequestHandler._parser`` (3.14) or
  ``RequestHandler._request_parser`` (3.12, 3.13); whether it is llhttp (the
  C parser, ``aiohttp._http_parser.HttpRequestParser``) or the pure-Python one;
- where aiohttp's parser saw chunk ends: ``StreamReader._http_chunk_splits``
  (a ``deque`` since 3.13, a ``list`` before; both only indexed and ``del``-ed
  here) and ``StreamReader._cursor``;
- that the llhttp parser holds ``request.content`` itself as its payload
  (the probe swaps that object's class while it feeds llhttp);
- the pure-Python parser's position (``aiohttp.http_parser``, the same in all
  three versions): its ``_payload_parser``, an ``HttpPayloadParser`` whose
  ``payload`` is ``request.content``, ``_type`` (``ParseState``), ``_chunk``
  (``ChunkState``), ``_chunk_size``, ``_chunk_tail``, ``_trailer_lines``,
  ``_lax`` (and ``_more_data_available``, 3.14); to give that parser the
  connection back, ``_payload_parser`` is set to ``None`` (and
  ``_payload_has_more_data`` to ``False``, 3.14), after checking ``_upgraded``,
  ``_tail``, ``_lines`` (and ``_pending_upgrade``, 3.14).

Every entry point checks what it relies on and answers "unavailable"
(``None``/``False``) when something is missing or different; the channel then
falls back to aiohttp's public ``readchunk()`` (messages still arrive, whole
and in order, but a chunk whose CRLF comes with the next one — Node's
``fetch`` — is delivered when that CRLF arrives) or, when only the Python
parser's position is not recognised, to that parser's own chunk ends (on
time, but framing errors and limits as aiohttp sees them).

One module per concern:

- ``parsed``: the request's parser, what it has parsed already
  (``read_parsed``, up to its chunk ends) and where it stood (``Located``);
- ``python_parser``: ``PythonTakeover``, aiohttp's pure-Python parser taken
  over from its own position and given the connection back;
- ``llhttp``: ``LlhttpTakeover``, llhttp's position learnt by a probe;
- ``probe``: the probe itself (crafted bytes fed to llhttp, what it reports).

Callers use the entry points through this package's attributes
(``takeover.llhttp_parser(...)``), not copies of them: the tests replace them
here to play an aiohttp whose internals changed.
"""

from __future__ import annotations

from .llhttp import LlhttpTakeover, llhttp_parser
from .parsed import Located, read_parsed, reads_chunk_ends
from .probe import WINDOW
from .python_parser import PythonTakeover

__all__ = [
    "WINDOW",
    "LlhttpTakeover",
    "Located",
    "PythonTakeover",
    "llhttp_parser",
    "read_parsed",
    "reads_chunk_ends",
]

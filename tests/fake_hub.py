"""A Hub faked at ``HfApi``'s HTTP calls (repository and branch creation, file listing and download,
``create_commit`` with additions, deletions and pull requests), kept on disk so that several
processes see the same repositories.

In-process: ``FakeHub(root).install(monkeypatch)``. For a command in a subprocess (the docs'
``maskformer-hf push ...``): ``python tests/fake_hub.py ROOT maskformer-hf-arguments...`` runs the CLI
with the fake installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:  # the HTTP client huggingface_hub is built on
    import httpx2 as httpx
except ImportError:
    import httpx
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError


class FakeHub:
    """Repository files under ``root/repos/<owner>/<name>/<revision>/``; commits in ``root/commits.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)

    def folder(self, repo_id: str, revision: str = "main") -> Path:
        return self.root / "repos" / repo_id / revision

    @property
    def commits(self) -> list[dict]:
        path = self.root / "commits.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def file(self, repo_id: str, name: str, revision: str = "main") -> bytes:
        return (self.folder(repo_id, revision) / name).read_bytes()

    def put(self, repo_id: str, name: str, data: bytes, revision: str = "main") -> None:
        """Change a file on the "Hub" outside a commit (an edit in the web editor)."""
        (self.folder(repo_id, revision) / name).write_bytes(data)

    def install(self, monkeypatch=None) -> None:
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            if hub.folder(repo_id).parent.exists() and not exist_ok:
                raise AssertionError(f"{repo_id} exists")
            hub.folder(repo_id).mkdir(parents=True, exist_ok=True)
            (hub.root / "repos" / repo_id / ".private").write_text(json.dumps(private))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kwargs):
            target = hub.folder(repo_id, branch)
            if not target.exists():
                target.mkdir(parents=True)
                for path in hub.folder(repo_id).glob("*"):
                    (target / path.name).write_bytes(path.read_bytes())

        def list_repo_files(api, repo_id, *, revision=None, **kwargs):
            folder = hub.folder(repo_id, revision or "main")
            if not folder.is_dir():
                url = f"https://huggingface.co/api/models/{repo_id}/tree/{revision or 'main'}"
                raise RepositoryNotFoundError(f"{repo_id}@{revision} not found",
                                              response=httpx.Response(404, request=httpx.Request("GET", url)))
            return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

        def hf_hub_download(api, repo_id, filename, *, revision=None, **kwargs):
            path = hub.folder(repo_id, revision or "main") / filename
            if not path.is_file():
                raise EntryNotFoundError(f"{filename} not in {repo_id}")
            return str(path)

        def create_commit(api, repo_id, operations, *, commit_message, revision=None, create_pr=None, **kwargs):
            # A pull request: a copy of the branch under refs/pr/N, the branch itself unchanged.
            revision = revision or "main"
            if create_pr:
                source, revision = hub.folder(repo_id, revision), f"refs/pr/{len(hub.commits) + 1}"
                hub.folder(repo_id, revision).mkdir(parents=True)
                for path in source.glob("*"):
                    (hub.folder(repo_id, revision) / path.name).write_bytes(path.read_bytes())
            target = hub.folder(repo_id, revision)
            target.mkdir(parents=True, exist_ok=True)
            names, deleted = [], []
            for op in operations:
                if isinstance(op, CommitOperationDelete):
                    (target / op.path_in_repo).unlink()
                    deleted.append(op.path_in_repo)
                    continue
                assert isinstance(op, CommitOperationAdd), op
                source = op.path_or_fileobj
                data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
                (target / op.path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                (target / op.path_in_repo).write_bytes(data)
                names.append(op.path_in_repo)
            record = {"repo_id": repo_id, "revision": revision, "message": commit_message, "files": names,
                      "deleted": deleted, "create_pr": bool(create_pr)}
            with (hub.root / "commits.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            number = len(hub.commits)
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{number}"})()

        for name, function in [("create_repo", create_repo), ("create_branch", create_branch),
                               ("list_repo_files", list_repo_files), ("hf_hub_download", hf_hub_download),
                               ("create_commit", create_commit)]:
            if monkeypatch is None:
                setattr(HfApi, name, function)
            else:
                monkeypatch.setattr(HfApi, name, function)

    def private(self, repo_id: str):
        return json.loads((self.root / "repos" / repo_id / ".private").read_text())


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_TOKEN", "hf_docs_token")
    FakeHub(sys.argv[1]).install()
    from maskformer_hf.cli import main

    sys.exit(main(sys.argv[2:]))

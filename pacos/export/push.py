"""`pacos export --push REPO`: upload an exported folder to the Hugging Face Hub.

Runs after the export is on disk, so a missing token or an unreachable hub costs nothing but the upload:
the error says which, in one line, and where the files are. The token comes from HF_TOKEN or the one
`hf auth login` stored, never from a flag (a flag lands in shell history and process lists).
"""

from __future__ import annotations

from pathlib import Path

from pacos.errors import PacosError, first_line


def check_repo_id(repo: str) -> None:
    """Refuse a malformed repository name before any export work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise PacosError(f"--push {repo}: not a Hugging Face repository name ({first_line(e)})") from None


def push_folder(folder: str | Path, repo: str, files: list[str] | None = None) -> str:
    """Create `repo` (a model repository, if missing) and upload `folder` (only `files`, when given, as
    the folder may hold other things); returns the repository's URL."""
    import huggingface_hub
    from huggingface_hub import constants

    from pacos.models import hub_unavailable

    folder = Path(folder)
    kept = f"the export stays in {folder}"
    if not huggingface_hub.get_token():
        raise PacosError(
            f"--push {repo}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); {kept}"
        )
    reason = hub_unavailable(repo)
    if reason:  # "not in the local hub cache" says nothing to an upload: only the network part does
        raise PacosError(f"--push {repo}: the hub is unreachable: {reason.split(', and ')[-1]}; {kept}")
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=folder,
            repo_type="model",
            allow_patterns=files,
            commit_message="Upload with pacos export",
        )
    except Exception as e:  # auth, permissions, network: the hub client's many error types
        raise PacosError(f"--push {repo}: the upload failed: {first_line(e)}; {kept}") from None
    return f"{constants.ENDPOINT.rstrip('/')}/{repo}"

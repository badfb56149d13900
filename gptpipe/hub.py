"""The Hugging Face hub: is it there? The hub client's own loaders (datasets, from_pretrained) retry
for 25-45 s without network, printing a line per retry, before they give up; one HEAD request with a
short timeout tells the same in a fraction of a second, so every hub asset is probed first."""

from __future__ import annotations

from gptpipe.errors import first_line

# Seconds to wait for the hub's answer: a HEAD to huggingface.co takes well under a second where
# there is network; offline, DNS fails at once.
HUB_PROBE_TIMEOUT_S = 3.0


def unreachable_reason(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None where the hub answers, or where the hub client is in offline mode (HF_HUB_OFFLINE=1: it
    reads its cache and makes no request); else why not, in a few words. One HEAD through the hub
    client's own HTTP session (its proxy settings apply), no retries: any HTTP answer is reachable."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.is_offline_mode():
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception as err:  # httpx's transport errors, or a proxy's; all mean "no hub"
        return f"{constants.ENDPOINT} is unreachable ({type(err).__name__}: {first_line(err)})"
    return None

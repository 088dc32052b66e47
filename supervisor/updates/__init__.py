"""Updates (the seed's flow 11): find a newer release through pip; install it only when the
operator opted in (``self_install``) and the installation is one this worker may change."""

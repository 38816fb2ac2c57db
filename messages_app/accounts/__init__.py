"""Accounts: JWT authentication through simplejwt, provisioning of the auth service's
subjects, tombstones of deleted accounts, and closing the sockets of revoked accounts."""

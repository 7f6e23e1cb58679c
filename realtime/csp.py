"""The Content-Security-Policy header on every HTML response (pages and the admin).

``templates/base.html`` also carries the policy in a ``<meta>`` tag, but a meta
tag reaches only the pages that extend it (not the admin's) and cannot say
``frame-ancestors``. The policy is ``settings.CONTENT_SECURITY_POLICY``.
"""

from django.conf import settings
from django.utils.deprecation import MiddlewareMixin


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Adds the policy to HTML responses that have none; sync and async."""

    def process_response(self, request, response):
        if (settings.CONTENT_SECURITY_POLICY
                and response.get("Content-Type", "").startswith("text/html")
                and "Content-Security-Policy" not in response
                and not (settings.DEBUG and response.status_code >= 400)):
            # DEBUG's error pages have inline styles and scripts (development only).
            response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY
        return response

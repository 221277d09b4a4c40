from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.messages.views import SuccessMessageMixin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.templatetags.static import static
from django.urls import include, path, reverse_lazy
from django.views import defaults
from django.views.generic import RedirectView

from .security import AdminLoginForm, LoginForm

admin.site.login_form = AdminLoginForm  # the same lockout as /login/ and the API token


def server_error(request: HttpRequest) -> HttpResponse:
    """An unexpected error: API clients get JSON like every other API error, not an HTML page
    they cannot parse; the traceback goes to the server's log (and ADMINS), never to the client."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "server error: the server's log has the details"}, status=500)
    return defaults.server_error(request)


handler500 = server_error


class PasswordChange(SuccessMessageMixin, auth_views.PasswordChangeView):
    template_name = "password_change.html"
    success_url = reverse_lazy("home")
    success_message = "Your password was changed."


urlpatterns = [
    # Pages outside base.html (Django admin, API docs) make browsers ask for /favicon.ico.
    path("favicon.ico", RedirectView.as_view(url=static("labeling/favicon.svg"), permanent=True), name="favicon"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="login.html", authentication_form=LoginForm),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # New members get a one-time password from their admin; this is where they replace it.
    path("account/password/", PasswordChange.as_view(), name="password_change"),
    path("api/v1/", include("labeling.api.urls")),
    path("", include("labeling.urls")),
]

"""A client's members. Admins only: the list holds people's e-mail addresses."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import Membership, Role
from ..services import members
from .base import ScopedAPIView, get_or_404
from .serializers import MemberCreatedSerializer, MemberCreateSerializer, MemberSerializer


class MemberAPIBase(ScopedAPIView):
    read_role = Role.ADMIN
    write_role = Role.ADMIN


class MemberListAPI(MemberAPIBase):
    """The client's members (admins only). POST adds one by username: a new account gets a
    one-time ``password`` in the reply; an account the caller already administers elsewhere is
    added as is."""

    @extend_schema(responses=MemberSerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        return Response(MemberSerializer(members.members(self.client), many=True).data)

    @extend_schema(request=MemberCreateSerializer, responses={201: MemberCreatedSerializer})
    def post(self, request: Request, slug: str) -> Response:
        form = MemberCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        d = form.validated_data
        membership, password = members.add_member(self.client, d["username"], d["role"], d.get("email", ""),
                                                 by=request.user)
        membership.password = password
        # The one-time password must not stay in any cache on the way.
        return Response(MemberCreatedSerializer(membership).data, status=status.HTTP_201_CREATED,
                        headers={"Cache-Control": "no-store"})


class MemberDetailAPI(MemberAPIBase):
    """One membership: PATCH changes the role, DELETE ends the access (labels stay). The last
    admin can be neither demoted nor removed."""

    def _membership(self, membership_id: int) -> Membership:
        return get_or_404(Membership.objects.select_related("user", "client"), pk=membership_id, client=self.client)

    @extend_schema(responses=MemberSerializer)
    def get(self, request: Request, slug: str, membership_id: int) -> Response:
        return Response(MemberSerializer(self._membership(membership_id)).data)

    @extend_schema(request=MemberSerializer, responses=MemberSerializer)
    def patch(self, request: Request, slug: str, membership_id: int) -> Response:
        membership = self._membership(membership_id)
        form = MemberSerializer(membership, data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        if "role" in form.validated_data:
            membership = members.change_role(membership, form.validated_data["role"])
        return Response(MemberSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, membership_id: int) -> Response:
        members.remove_member(self._membership(membership_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

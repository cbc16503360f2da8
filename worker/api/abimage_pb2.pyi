from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ABImage(_message.Message):
    __slots__ = ("color", "data", "width", "height")
    COLOR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    color: bool
    data: bytes
    width: int
    height: int
    def __init__(self, color: _Optional[bool] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ABImageRotateRequest(_message.Message):
    __slots__ = ("rotation", "image")
    class Rotation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[ABImageRotateRequest.Rotation]
        NINETY_DEG: _ClassVar[ABImageRotateRequest.Rotation]
        ONE_EIGHTY_DEG: _ClassVar[ABImageRotateRequest.Rotation]
        TWO_SEVENTY_DEG: _ClassVar[ABImageRotateRequest.Rotation]
    NONE: ABImageRotateRequest.Rotation
    NINETY_DEG: ABImageRotateRequest.Rotation
    ONE_EIGHTY_DEG: ABImageRotateRequest.Rotation
    TWO_SEVENTY_DEG: ABImageRotateRequest.Rotation
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    rotation: ABImageRotateRequest.Rotation
    image: ABImage
    def __init__(self, rotation: _Optional[_Union[ABImageRotateRequest.Rotation, str]] = ..., image: _Optional[_Union[ABImage, _Mapping]] = ...) -> None: ...

class ABImageRotateResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ABImage
    def __init__(self, image: _Optional[_Union[ABImage, _Mapping]] = ...) -> None: ...

class ABCustomImageEndpointRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: ABImage
    def __init__(self, image: _Optional[_Union[ABImage, _Mapping]] = ...) -> None: ...

class ABCustomImageEndpointResponse(_message.Message):
    __slots__ = ("classification",)
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    classification: str
    def __init__(self, classification: _Optional[str] = ...) -> None: ...

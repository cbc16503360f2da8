from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    WORKER_BUSY: _ClassVar[ErrorReason]
    IMAGE_TOO_LARGE: _ClassVar[ErrorReason]
    PIXEL_LIMIT: _ClassVar[ErrorReason]
    UNSUPPORTED_FORMAT: _ClassVar[ErrorReason]
    CORRUPT_IMAGE: _ClassVar[ErrorReason]
    EMPTY_IMAGE: _ClassVar[ErrorReason]
    INVALID_ROTATION: _ClassVar[ErrorReason]
    INVALID_PIXELS: _ClassVar[ErrorReason]
    MODEL_LOADING: _ClassVar[ErrorReason]
    INTERNAL: _ClassVar[ErrorReason]
    CALL_EXPIRED: _ClassVar[ErrorReason]
    CALL_CANCELLED: _ClassVar[ErrorReason]
    WORK_LIMIT: _ClassVar[ErrorReason]
    REFERENCES_OFF: _ClassVar[ErrorReason]
    OUTSIDE_ROOTS: _ClassVar[ErrorReason]
    FILE_NOT_FOUND: _ClassVar[ErrorReason]
    FILE_UNREADABLE: _ClassVar[ErrorReason]
    FILE_UNWRITABLE: _ClassVar[ErrorReason]
    INVALID_FORMAT: _ClassVar[ErrorReason]
    INVALID_QUALITY: _ClassVar[ErrorReason]
    CONVERSION_REFUSED: _ClassVar[ErrorReason]
    STREAM_INVALID: _ClassVar[ErrorReason]
    BATCH_TOO_LARGE: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
WORKER_BUSY: ErrorReason
IMAGE_TOO_LARGE: ErrorReason
PIXEL_LIMIT: ErrorReason
UNSUPPORTED_FORMAT: ErrorReason
CORRUPT_IMAGE: ErrorReason
EMPTY_IMAGE: ErrorReason
INVALID_ROTATION: ErrorReason
INVALID_PIXELS: ErrorReason
MODEL_LOADING: ErrorReason
INTERNAL: ErrorReason
CALL_EXPIRED: ErrorReason
CALL_CANCELLED: ErrorReason
WORK_LIMIT: ErrorReason
REFERENCES_OFF: ErrorReason
OUTSIDE_ROOTS: ErrorReason
FILE_NOT_FOUND: ErrorReason
FILE_UNREADABLE: ErrorReason
FILE_UNWRITABLE: ErrorReason
INVALID_FORMAT: ErrorReason
INVALID_QUALITY: ErrorReason
CONVERSION_REFUSED: ErrorReason
STREAM_INVALID: ErrorReason
BATCH_TOO_LARGE: ErrorReason

class ImageRef(_message.Message):
    __slots__ = ("path", "uri")
    PATH_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    path: str
    uri: str
    def __init__(self, path: _Optional[str] = ..., uri: _Optional[str] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("image", "degrees", "format", "quality", "auto", "source", "destination")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DEGREES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    degrees: int
    format: str
    quality: int
    auto: bool
    source: ImageRef
    destination: ImageRef
    def __init__(self, image: _Optional[bytes] = ..., degrees: _Optional[int] = ..., format: _Optional[str] = ..., quality: _Optional[int] = ..., auto: _Optional[bool] = ..., source: _Optional[_Union[ImageRef, _Mapping]] = ..., destination: _Optional[_Union[ImageRef, _Mapping]] = ...) -> None: ...

class RotateResponse(_message.Message):
    __slots__ = ("image", "format", "width", "height", "method", "worker", "decided_by", "degrees", "note", "output_bytes", "output_sha256")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DEGREES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    format: str
    width: int
    height: int
    method: str
    worker: str
    decided_by: str
    degrees: int
    note: str
    output_bytes: int
    output_sha256: str
    def __init__(self, image: _Optional[bytes] = ..., format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., method: _Optional[str] = ..., worker: _Optional[str] = ..., decided_by: _Optional[str] = ..., degrees: _Optional[int] = ..., note: _Optional[str] = ..., output_bytes: _Optional[int] = ..., output_sha256: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "source")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    source: ImageRef
    def __init__(self, image: _Optional[bytes] = ..., source: _Optional[_Union[ImageRef, _Mapping]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "label", "score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    box: Box
    label: str
    score: float
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("label", "confidence", "faces", "model", "model_version", "width", "height", "worker", "orientation")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    label: str
    confidence: float
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    model: str
    model_version: str
    width: int
    height: int
    worker: str
    orientation: int
    def __init__(self, label: _Optional[str] = ..., confidence: _Optional[float] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., worker: _Optional[str] = ..., orientation: _Optional[int] = ...) -> None: ...

class RotateChunk(_message.Message):
    __slots__ = ("request", "response", "data", "size")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    request: RotateRequest
    response: RotateResponse
    data: bytes
    size: int
    def __init__(self, request: _Optional[_Union[RotateRequest, _Mapping]] = ..., response: _Optional[_Union[RotateResponse, _Mapping]] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class ClassifyChunk(_message.Message):
    __slots__ = ("request", "data", "size")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    request: ClassifyRequest
    data: bytes
    size: int
    def __init__(self, request: _Optional[_Union[ClassifyRequest, _Mapping]] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class RotateBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RotateRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[RotateRequest, _Mapping]]] = ...) -> None: ...

class RotateResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: RotateResponse
    error: _status_pb2.Status
    def __init__(self, response: _Optional[_Union[RotateResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class RotateBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RotateResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RotateResult, _Mapping]]] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ClassifyRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[ClassifyRequest, _Mapping]]] = ...) -> None: ...

class ClassifyResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: ClassifyResponse
    error: _status_pb2.Status
    def __init__(self, response: _Optional[_Union[ClassifyResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClassifyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClassifyResult, _Mapping]]] = ...) -> None: ...
